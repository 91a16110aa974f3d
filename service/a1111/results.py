"""Engine results → the sdapi response: encoded images with infotexts and A1111's `info` JSON (A1111
modules/api/api.py: Api.text2imgapi)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engine.img2img import mask_composite
from engine.pipeline import GenerationResult
from engine.plan import GenerationPlan
from service.a1111.encode import encode_image, to_base64
from service.a1111.extra_networks import parse_lora_hashes
from service.a1111.grids import image_grid
from service.a1111.infotext import create_infotext, generation_parameters
from service.a1111.infotext_fields import VERSION, Source, written
from service.a1111.job_options import JobOptions
from service.runtime.models import ModelEntry


@dataclass(frozen=True)
class OutputImage:
    """One image of A1111's `processed.images`: a generation (`source` = its index in all_seeds), a mask image
    after it, or the grid."""

    image: Image.Image
    infotext: str | None  # None for mask images, which carry none
    source: int | None  # None for mask images and the grid
    kind: str = "sample"  # "sample", "mask", "mask-composite" or "grid"


@dataclass(frozen=True)
class Outputs:
    """What a job produced, in the response's order (A1111 modules/processing.py: process_images_inner)."""

    images: list[OutputImage]
    infotexts: list[str]  # A1111's `infotexts`: the grid's first when it is returned, then one per generation
    grid: OutputImage | None = None  # made when A1111 makes one, returned or only saved
    index_of_first_image: int = 0


def collect_outputs(plan: GenerationPlan, result: GenerationResult, entry: ModelEntry,
                    options: JobOptions | Mapping[str, Any], grid_wanted: bool = False) -> Outputs:
    """The images and infotexts of a job; `grid_wanted` is A1111's `not p.do_not_save_grid` (the API sets it
    from `save_images`).

    A1111 makes a grid when option `return_grid` or `grid_save` is on, the grid is wanted, and there are two
    images or more (mask images count) or `grid_only_if_multiple` is off; it puts the grid first only with
    `return_grid`. The grid's infotext is image 0's, written with the job's main prompt.
    """
    output = JobOptions.of(options)
    infotexts: list[str] = []
    images: list[OutputImage] = []
    for i, image in enumerate(result.images):
        params = generation_parameters(plan, i, entry.name, entry.short_hash, result)
        infotext = create_infotext(plan.prompts[i], plan.negative_prompts[i], params)
        infotexts.append(infotext)
        images.append(OutputImage(image, infotext, i))
        for kind, extra in mask_images(result, i, output.return_mask, output.return_mask_composite):
            images.append(OutputImage(extra, None, None, kind))
    unwanted = len(images) < 2 and output.grid_only_if_multiple
    if not images or not grid_wanted or unwanted or not (output.return_grid or output.grid_save):
        return Outputs(images, infotexts)
    grid_image = image_grid([o.image for o in images], plan.batch_size, n_rows=output.n_rows,
                            grid_prevent_empty_spots=output.grid_prevent_empty_spots,
                            grid_background_color=output.grid_background_color)
    text = create_infotext(plan.prompts[0], plan.negative_prompts[0],
                           generation_parameters(plan, 0, entry.name, entry.short_hash, result))
    grid = OutputImage(grid_image, text, None, "grid")
    if not output.return_grid:
        return Outputs(images, infotexts, grid)
    return Outputs([grid, *images], [text, *infotexts], grid, 1)


def build_response(plan: GenerationPlan, result: GenerationResult, entry: ModelEntry,
                   options: JobOptions | Mapping[str, Any], parameters: dict, send_images: bool = True,
                   job_timestamp: str | None = None, *, as_bytes: bool = False,
                   outputs: Outputs | None = None, warnings: list[str] | None = None) -> dict:
    """The sdapi response dict; `as_bytes` keeps images as encoded bytes (gRPC) instead of base64 (REST).

    Everything it reports comes from the plan, the result and the model `entry`; `parameters` (the request as a
    dict) is only echoed, and `options` only choose how images are encoded and which mask images come back.
    `outputs` (collect_outputs) carries the grid when the job made one; `warnings` are added to the plan's.
    """
    output = JobOptions.of(options)
    outputs = outputs or collect_outputs(plan, result, entry, output)
    infotexts = outputs.infotexts
    images = []
    sources: list[int | None] = []  # the generation each returned image is; None for mask images and the grid

    if send_images:
        for out in outputs.images:
            data = encode_image(out.image, output.samples_format, out.infotext if output.enable_pnginfo else None,
                                output.jpeg_quality, output.webp_lossless)
            images.append(data if as_bytes else to_base64(data))
            sources.append(out.source)
    info = {
        "prompt": plan.prompts[0],
        "all_prompts": list(plan.prompts),
        "negative_prompt": plan.negative_prompts[0],
        "all_negative_prompts": list(plan.negative_prompts),
        "seed": plan.seeds[0],
        "all_seeds": list(plan.seeds),
        "subseed": plan.subseeds[0],
        "all_subseeds": list(plan.subseeds),
        "subseed_strength": float(plan.subseed_strength),
        "width": plan.width,
        "height": plan.height,
        "sampler_name": plan.sampler,
        "cfg_scale": float(plan.cfg_scale),
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "restore_faces": plan.report.restore_faces,
        "face_restoration_model": plan.report.face_restoration_model,
        "sd_model_name": entry.name,
        "sd_model_hash": entry.short_hash,
        "sd_vae_name": plan.report.vae[0] if plan.report.vae else None,
        "sd_vae_hash": plan.report.vae[1] if plan.report.vae else None,
        "seed_resize_from_w": plan.seed_resize_from_w,
        "seed_resize_from_h": plan.seed_resize_from_h,
        "denoising_strength": plan.report.denoising_strength,
        "extra_generation_params": extra_generation_params(plan, result),
        "index_of_first_image": outputs.index_of_first_image,
        "infotexts": infotexts,
        "styles": list(plan.report.styles),
        "job_timestamp": job_timestamp or time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": bool(getattr(result, "is_using_inpainting_conditioning", False)),
        "version": VERSION,
    }
    notes = [*plan.report.warnings, *(warnings or ()), *plan.report.comments]
    if notes:  # sdedge's own key: A1111 clients read `info` by key and ignore the ones they do not know
        info["sdedge_warnings"] = notes
    response = {"images": images, "parameters": parameters, "info": json.dumps(info, default=lambda _: None)}
    if as_bytes:  # gRPC types each image and the networks; REST's sdapi shape has no place for these
        response["image_sources"] = sources
        hashes = parse_lora_hashes(plan.report.lora_hashes or "")
        response["networks"] = [
            {"name": n.name, "hash": hashes.get(n.name.translate(str.maketrans("", "", ":,")), ""), "te": n.te,
             "unet": n.unet, **({"dyn": n.dyn} if n.dyn is not None else {})}
            for n in plan.networks]
        response["embeddings"] = [{"name": name, "hash": h}
                                  for name, h in parse_lora_hashes(plan.report.ti_hashes or "").items()]
    return response


def mask_images(result: GenerationResult, index: int, mask: bool,
                composite: bool) -> list[tuple[str, Image.Image]]:
    """What A1111 appends after inpainted image `index` (A1111 modules/processing.py: process_images_inner):
    the mask (option `return_mask`, or `save_mask` when saving) and the masked composite (`return_mask_composite`
    / `save_mask_composite`), as (kind, image). They carry no infotext and take no `infotexts` entry."""
    overlay = result.mask_for_overlay
    if overlay is None:
        return []
    extras = []
    if mask:
        extras.append(("mask", overlay.convert("RGB")))
    if composite:
        extras.append(("mask-composite", mask_composite(result.denoised[index], overlay)))
    return extras


def extra_generation_params(plan: GenerationPlan, result) -> dict[str, Any]:
    """`info.extra_generation_params` as A1111 fills it for hires fix and img2img (per-image prompts are null)."""
    denoising = plan.img2img or plan.hires
    if denoising is None:
        return {}
    extras = {"Denoising strength": float(denoising.denoising_strength),
              **written(Source(plan, 0, result=result), ("hires", "img2img"))}
    return {k: v for k, v in extras.items() if v is not None or k in ("Hires prompt", "Hires negative prompt")}

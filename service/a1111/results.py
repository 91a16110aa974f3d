"""Engine results → the sdapi response: encoded images with infotexts and A1111's `info` JSON (A1111
modules/api/api.py: Api.text2imgapi)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from PIL import Image

from engine.img2img import mask_composite
from engine.pipeline import GenerationResult
from engine.plan import GenerationPlan
from service.a1111.encode import encode_image, to_base64
from service.a1111.infotext import create_infotext, generation_parameters
from service.a1111.infotext_fields import VERSION, Source, written
from service.a1111.job_options import JobOptions
from service.runtime.models import ModelEntry


def build_response(plan: GenerationPlan, result: GenerationResult, entry: ModelEntry,
                   options: JobOptions | Mapping[str, Any], parameters: dict, send_images: bool = True,
                   job_timestamp: str | None = None, *, as_bytes: bool = False) -> dict:
    """The sdapi response dict; `as_bytes` keeps images as encoded bytes (gRPC) instead of base64 (REST).

    Everything it reports comes from the plan, the result and the model `entry`; `parameters` (the request as a
    dict) is only echoed, and `options` only choose how images are encoded and which mask images come back.
    """
    output = JobOptions.of(options)
    infotexts = []
    images = []

    sources: list[int | None] = []  # the generation each returned image is; None for mask images

    def add(image: Image.Image, infotext: str | None, source: int | None) -> None:
        data = encode_image(image, output.samples_format, infotext, output.jpeg_quality, output.webp_lossless)
        images.append(data if as_bytes else to_base64(data))
        sources.append(source)

    for i, image in enumerate(result.images):
        params = generation_parameters(plan, i, entry.name, entry.short_hash, result)
        infotext = create_infotext(plan.prompts[i], plan.negative_prompts[i], params)
        infotexts.append(infotext)
        if send_images:
            add(image, infotext if output.enable_pnginfo else None, i)
            for extra in mask_images(result, i, output):
                add(extra, None, None)
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
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": plan.seed_resize_from_w,
        "seed_resize_from_h": plan.seed_resize_from_h,
        "denoising_strength": plan.report.denoising_strength,
        "extra_generation_params": extra_generation_params(plan, result),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": list(plan.report.styles),
        "job_timestamp": job_timestamp or time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": bool(getattr(result, "is_using_inpainting_conditioning", False)),
        "version": VERSION,
    }
    if plan.report.warnings:  # sdedge's own key: A1111 clients read `info` by key and ignore the ones they do not know
        info["sdedge_warnings"] = list(plan.report.warnings)
    response = {"images": images, "parameters": parameters, "info": json.dumps(info, default=lambda _: None)}
    if as_bytes:  # gRPC types each image; REST's sdapi shape has no place for this
        response["image_sources"] = sources
    return response


def mask_images(result: GenerationResult, index: int, output: JobOptions) -> list[Image.Image]:
    """What A1111 appends after inpainted image `index` (A1111 modules/processing.py: process_images_inner):
    the mask if option `return_mask`,
    the masked composite if `return_mask_composite`. They carry no infotext and take no `infotexts` entry."""
    mask = result.mask_for_overlay
    if mask is None:
        return []
    extras = []
    if output.return_mask:
        extras.append(mask.convert("RGB"))
    if output.return_mask_composite:
        extras.append(mask_composite(result.denoised[index], mask))
    return extras


def extra_generation_params(plan: GenerationPlan, result) -> dict[str, Any]:
    """`info.extra_generation_params` as A1111 fills it for hires fix and img2img (per-image prompts are null)."""
    denoising = plan.img2img or plan.hires
    if denoising is None:
        return {}
    extras = {"Denoising strength": float(denoising.denoising_strength),
              **written(Source(plan, 0, result=result), ("hires", "img2img"))}
    return {k: v for k, v in extras.items() if v is not None or k in ("Hires prompt", "Hires negative prompt")}

"""Engine results → the sdapi response: encoded images with infotexts and A1111's `info` JSON (§5)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from PIL import Image

from engine.img2img import mask_composite
from engine.pipeline import GenerationResult
from engine.plan import GenerationPlan
from service.encode import encode_image, to_base64
from service.infotext import VERSION, create_infotext, denoising_parameters, generation_parameters
from service.models import ModelEntry
from service.options import unimplemented_warnings


def build_response(plan: GenerationPlan, result: GenerationResult, entry: ModelEntry,
                   options: Mapping[str, Any], parameters: dict, send_images: bool = True,
                   job_timestamp: str | None = None, styles: list[str] | None = None,
                   as_bytes: bool = False) -> dict:
    """The sdapi response dict; `as_bytes` keeps images as encoded bytes (gRPC) instead of base64 (REST)."""
    infotexts = []
    images = []
    fmt = str(options.get("samples_format", "png"))

    sources: list[int | None] = []  # the generation each returned image is; None for mask images

    def add(image: Image.Image, infotext: str | None, source: int | None) -> None:
        data = encode_image(image, fmt, infotext, int(options.get("jpeg_quality", 80)),
                            bool(options.get("webp_lossless", False)))
        images.append(data if as_bytes else to_base64(data))
        sources.append(source)

    for i, image in enumerate(result.images):
        params = generation_parameters(plan, i, entry.name, entry.short_hash, options, parameters, result)
        infotext = create_infotext(plan.prompts[i], plan.negative_prompts[i], params)
        infotexts.append(infotext)
        if send_images:
            add(image, infotext if options.get("enable_pnginfo", True) else None, i)
            for extra in mask_images(result, i, options):
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
        "restore_faces": bool(options.get("face_restoration", False)),
        "face_restoration_model": None,
        "sd_model_name": entry.name,
        "sd_model_hash": entry.short_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": plan.seed_resize_from_w,
        "seed_resize_from_h": plan.seed_resize_from_h,
        "denoising_strength": (float((plan.img2img or plan.hires).denoising_strength) if plan.img2img or plan.hires
                               else parameters.get("denoising_strength")),
        "extra_generation_params": extra_generation_params(plan, parameters, result),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": styles or [],
        "job_timestamp": job_timestamp or time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": bool(getattr(result, "is_using_inpainting_conditioning", False)),
        "version": VERSION,
    }
    warnings = unimplemented_warnings(options)
    if warnings:  # sdedge's own key: A1111 clients read `info` by key and ignore the ones they do not know
        info["sdedge_warnings"] = warnings
    response = {"images": images, "parameters": parameters, "info": json.dumps(info, default=lambda _: None)}
    if as_bytes:  # gRPC types each image; REST's sdapi shape has no place for this
        response["image_sources"] = sources
    return response


def mask_images(result: GenerationResult, index: int, options: Mapping[str, Any]) -> list[Image.Image]:
    """What A1111 appends after inpainted image `index` (a1111-api.md §5.1): the mask if option `return_mask`,
    the masked composite if `return_mask_composite`. They carry no infotext and take no `infotexts` entry."""
    mask = result.mask_for_overlay
    if mask is None:
        return []
    extras = []
    if options.get("return_mask", False):
        extras.append(mask.convert("RGB"))
    if options.get("return_mask_composite", False):
        extras.append(mask_composite(result.denoised[index], mask))
    return extras


def extra_generation_params(plan: GenerationPlan, parameters: Mapping[str, Any], result) -> dict[str, Any]:
    """`info.extra_generation_params` as A1111 fills it for hires fix and img2img (per-image prompts are null)."""
    denoising = plan.img2img or plan.hires
    if denoising is None:
        return {}
    extras = {"Denoising strength": float(denoising.denoising_strength),
              **denoising_parameters(plan, 0, parameters, result)}
    return {k: v for k, v in extras.items() if v is not None or k in ("Hires prompt", "Hires negative prompt")}

"""Extras (postprocessing) requests → upscaled images with A1111's infotext (A1111 modules/api/api.py:
Api.extras_single_image_api): the one place
extra-single-image / extra-batch-images fields are interpreted."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engine.upscalers import UpscalerRegistry
from service.a1111.errors import InvalidRequest
from service.a1111.image_metadata import read_info_from_image
from service.a1111.infotext import quote

MAX_SIDE = 8192  # A1111's UI limit for "scale to"; also bounds "scale by" results


@dataclass(frozen=True)
class ExtrasPlan:
    resize_mode: int  # 0: scale by `upscale_by`; 1: scale to width × height (cover, then centre-crop if `crop`)
    upscale_by: float
    width: int
    height: int
    crop: bool
    upscaler_1: str | None  # None: no upscaling at all
    upscaler_2: str | None
    upscaler_2_visibility: float


@dataclass(frozen=True)
class ExtrasOutput:
    image: Image.Image
    text: dict[str, str]  # PNG text chunks: the input's own, its `parameters`, then `postprocessing`


def _upscaler(registry: UpscalerRegistry, name: str | None) -> str | None:
    if name is None or name == "None":
        return None
    if registry.get(name) is None:
        raise InvalidRequest("upscaler", f"could not find upscaler named {name}")
    return name


def plan_extras(req: Any, registry: UpscalerRegistry) -> ExtrasPlan:
    """Validate an ExtrasBaseRequest: unknown upscalers and impossible sizes are the client's mistake."""
    return ExtrasPlan(
        resize_mode=int(req.resize_mode),
        upscale_by=req.upscaling_resize,
        width=int(req.upscaling_resize_w),
        height=int(req.upscaling_resize_h),
        crop=bool(req.upscaling_crop),
        upscaler_1=_upscaler(registry, req.upscaler_1),
        upscaler_2=_upscaler(registry, req.upscaler_2),
        upscaler_2_visibility=float(req.extras_upscaler_2_visibility),
    )


def check_size(plan: ExtrasPlan, width: int, height: int) -> None:
    """Refuse, before any work, a result that would be empty or larger than MAX_SIDE on a side."""
    if plan.upscaler_1 is None:
        return
    scale = plan.upscale_by if plan.resize_mode == 0 else max(plan.width / width, plan.height / height)
    out_w, out_h = int((width * scale) // 8 * 8), int((height * scale) // 8 * 8)
    if plan.resize_mode == 1 and plan.crop:
        out_w, out_h = plan.width, plan.height
    if out_w < 1 or out_h < 1:
        raise InvalidRequest("upscaling_resize", f"{width}x{height} scaled by {scale:g} leaves no pixels")
    if max(out_w, out_h) > MAX_SIDE:
        raise InvalidRequest("upscaling_resize", f"result of {out_w}x{out_h} is over the limit of {MAX_SIDE} px")


def _upscale(image: Image.Image, info: dict[str, Any], plan: ExtrasPlan, name: str,
             registry: UpscalerRegistry) -> Image.Image:
    """`ScriptPostprocessingUpscale.upscale` (max side length is 0 through the API)."""
    scale = plan.upscale_by
    if plan.resize_mode == 1:
        scale = max(plan.width / image.width, plan.height / image.height)
        info["Postprocess upscale to"] = f"{plan.width}x{plan.height}"
    else:
        info["Postprocess upscale by"] = plan.upscale_by
    image = registry.get(name).upscale(image, scale)
    if plan.resize_mode == 1 and plan.crop:
        cropped = Image.new("RGB", (plan.width, plan.height))
        cropped.paste(image, box=(plan.width // 2 - image.width // 2, plan.height // 2 - image.height // 2))
        image = cropped
        info["Postprocess crop to"] = f"{image.width}x{image.height}"
    return image


def postprocess(image: Image.Image, plan: ExtrasPlan, registry: UpscalerRegistry) -> tuple[Image.Image, dict]:
    """The Upscale postprocessing script on one RGB image: (image, infotext entries)."""
    info: dict[str, Any] = {}
    if plan.upscaler_1 is None:
        return image, info
    upscaled = _upscale(image, info, plan, plan.upscaler_1, registry)
    info["Postprocess upscaler"] = plan.upscaler_1
    if plan.upscaler_2 is not None and plan.upscaler_2_visibility > 0:
        second = _upscale(image, info, plan, plan.upscaler_2, registry)
        if upscaled.mode != second.mode:
            second = second.convert(upscaled.mode)
        upscaled = Image.blend(upscaled, second, plan.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = plan.upscaler_2
    return upscaled, info


def infotext(info: Mapping[str, Any]) -> str:
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)


def plaintext_to_html(text: str) -> str:
    """A1111 `ui_common.plaintext_to_html`: escaped lines joined by `<br>` in a paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def run_one(image: Image.Image, plan: ExtrasPlan, registry: UpscalerRegistry,
            enable_pnginfo: bool = True) -> tuple[ExtrasOutput, str]:
    """One input image → output keeping the input's metadata (+ `postprocessing`), and its infotext."""
    parameters, existing = read_info_from_image(image)
    text = {k: v for k, v in existing.items() if isinstance(k, str) and isinstance(v, str)}
    if parameters:
        text["parameters"] = parameters
    result, info = postprocess(image.convert("RGB"), plan, registry)
    line = infotext(info)
    if enable_pnginfo:
        text["postprocessing"] = line
    else:
        text = {}
    return ExtrasOutput(result, text), line

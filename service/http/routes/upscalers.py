"""GET /sdapi/v1/upscalers and /latent-upscale-modes: what `hr_upscaler` accepts (A1111 modules/api/api.py:
Api.get_upscalers, get_latent_upscale_modes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from engine.image_ops import LATENT_UPSCALE_MODES, UPSCALERS

router = APIRouter()

DEFAULT_SCALE = 4.0  # A1111's `UpscalerData.scale` for upscalers without a model


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


@router.get("/sdapi/v1/upscalers", response_model=list[UpscalerItem])
def upscalers(request: Request) -> list[UpscalerItem]:
    """"None", "Lanczos", "Nearest", then the server's model upscalers (A1111's order)."""
    items = [UpscalerItem(name=name, scale=DEFAULT_SCALE) for name in UPSCALERS]
    registry = getattr(request.app.state.sdedge, "upscalers", None)
    for upscaler in registry.all() if registry is not None else ():
        if upscaler.name not in UPSCALERS:
            items.append(UpscalerItem(name=upscaler.name, model_name=upscaler.name, model_path=upscaler.path,
                                      scale=upscaler.scale))
    return items


@router.get("/sdapi/v1/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
def latent_upscale_modes() -> list[LatentUpscalerModeItem]:
    return [LatentUpscalerModeItem(name=name) for name in LATENT_UPSCALE_MODES]

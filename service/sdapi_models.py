"""Pydantic models of A1111's sdapi wire format (a1111-api.md §3, §5), quirks and defaults included.

A1111 validates with pydantic v1: every generation field is optional (explicit nulls pass), unknown keys are
ignored, "512" becomes 512 and 20.7 becomes 20 for int fields. The aliases below give pydantic v2 the same
leniency. Nothing here interprets a field: that is service/translate.py's job.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _truncate_float(value: Any) -> Any:
    # pydantic v1 turned 20.7 into 20 for int fields; v2 refuses fractional floats.
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


LenientInt = Annotated[int, BeforeValidator(_truncate_float)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=False, protected_namespaces=())


class GenerationRequest(_Lenient):
    """Fields common to txt2img and img2img, in A1111's schema order and with its API defaults."""

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: LenientInt | None = -1
    subseed: LenientInt | None = -1
    subseed_strength: float | None = 0.0
    seed_resize_from_h: LenientInt | None = -1
    seed_resize_from_w: LenientInt | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: LenientInt | None = 1
    n_iter: LenientInt | None = 1
    steps: LenientInt | None = 50
    cfg_scale: float | None = 7.0
    width: LenientInt | None = 512
    height: LenientInt | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None


class Txt2ImgRequest(GenerationRequest):
    """`StableDiffusionProcessingTxt2Img` as the API accepts it."""

    enable_hr: bool | None = False
    firstphase_width: LenientInt | None = 0
    firstphase_height: LenientInt | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: LenientInt | None = 0
    hr_resize_x: LenientInt | None = 0
    hr_resize_y: LenientInt | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(GenerationRequest):
    """`StableDiffusionProcessingImg2Img` as the API accepts it (denoising_strength defaults to 0.75 here)."""

    denoising_strength: float | None = 0.75
    init_images: list[Any] | None = None
    resize_mode: LenientInt | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: LenientInt | None = 4
    mask_blur_y: LenientInt | None = 4
    mask_blur: LenientInt | None = None
    mask_round: bool | None = True
    inpainting_fill: LenientInt | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: LenientInt | None = 0
    inpainting_mask_invert: LenientInt | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    include_init_images: bool | None = False
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


class GenerationResponse(BaseModel):
    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None

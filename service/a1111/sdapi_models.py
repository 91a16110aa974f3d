"""Pydantic models of A1111's sdapi wire format (A1111 modules/api/models.py; modules/api/api.py:
Api.text2imgapi), quirks and defaults included.

A1111 validates with pydantic v1: every generation field is optional (explicit nulls pass), unknown keys are
ignored, "512" becomes 512 and 20.7 becomes 20 for int fields. The aliases below give pydantic v2 the same
leniency. Nothing here interprets a field: that is service/a1111/translate.py's job.

This is also the one place that bounds every numeric field (docs/compatibility.md "Limits"). A1111 bounds none of
them; ours are wide enough for anything a real client sends (A1111's UI sliders stay far inside) and narrow
enough that the engine's arithmetic stays finite and its allocations bounded: a value outside is a 422 naming the
limit, never an OverflowError or MemoryError in a job. Non-finite numbers (JSON `NaN`, `Infinity`, `1e400`) are
refused anywhere in a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.prompt_parser import MAX_PROMPT_CHARS, PromptTooComplex, check_prompt


@dataclass
class RequestLimits:
    """Limits a server can configure (`sdedge serve --max-side`); `configure_limits` sets the process's."""

    max_side: int = 4096  # px per side, of every size a request can ask for (first pass, hires, seed resize)


LIMITS = RequestLimits()


def configure_limits(limits: RequestLimits) -> None:
    LIMITS.max_side = limits.max_side


# A1111's seeds go to torch.manual_seed, which takes [-2**63, 2**64 - 1] (negatives wrap) and raises on
# anything wider; CPU noise keeps seed mod 2**32, GPU/NV noise the 64-bit key (A1111 modules/rng_philox.py;
# modules/rng.py: randn).
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
MAX_STEPS = 1000  # A1111's UI stops at 150
MAX_IMAGES = 64  # batch_size × n_iter
MAX_MASK_BLUR = 64  # A1111's UI slider maximum; the blur costs O(kernel) per pixel
MAX_SCALE = 1000.0  # |cfg_scale|, |image_cfg_scale| (UI: 1..30 and 0..3); float32 guidance stays finite
MAX_SIGMA = 1e6  # s_tmin, s_tmax, s_min_uncond compare with sigmas (SD 1.x: ≤ 14.6; zero-SNR schedules ~4500)
MAX_NOISE = 1000.0  # s_noise, eta, initial_noise_multiplier: multipliers of unit-variance noise (UI: ≤ 1.5)
MAX_CHURN = 10_000.0  # s_churn / (steps - 1) is capped at √2 − 1 anyway; negative churn drives sigmas below 0
MAX_HR_SCALE = 16.0  # UI: 1..4; the hires size must stay within max_side too
MAX_INFOTEXT_CHARS = 3 * MAX_PROMPT_CHARS  # prompt, negative prompt and parameters


# Options that feed the engine (override_settings and /sdapi/v1/options): the same bounds as the request fields
# they stand for; service/runtime/options.py applies them. 0 means "the model's default" for sigma_min/sigma_max/rho.
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "eta_noise_seed_delta": (MIN_SEED, MAX_SEED),
    "eta_ancestral": (0.0, MAX_NOISE),
    "eta_ddim": (0.0, MAX_NOISE),
    "s_churn": (0.0, MAX_CHURN),
    "s_tmin": (0.0, MAX_SIGMA),
    "s_tmax": (0.0, MAX_SIGMA),
    "s_noise": (0.0, MAX_NOISE),
    "s_min_uncond": (0.0, MAX_SIGMA),
    "sigma_min": (0.0, MAX_SIGMA),
    "sigma_max": (0.0, MAX_SIGMA),
    "rho": (0.0, 100.0),  # Karras ρ = 7; σ^(1/ρ) and back stays finite
    "beta_dist_alpha": (0.01, 100.0),  # UI 0.01..1; 0 makes the Beta quantiles NaN
    "beta_dist_beta": (0.01, 100.0),
    "skip_early_cond": (0.0, 1.0),
    "img2img_extra_noise": (0.0, 1.0),
    "initial_noise_multiplier": (0.0, MAX_NOISE),
    "comma_padding_backtrack": (0, 74),  # a 75-token chunk
    "uni_pc_order": (1, 50),
    "token_merging_ratio": (0.0, 0.9),
}


def _truncate_float(value: Any) -> Any:
    # pydantic v1 turned 20.7 into 20 for int fields; v2 refuses fractional floats.
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


LenientInt = Annotated[int, BeforeValidator(_truncate_float)]


def _within(low: float, high: float):
    def check(value):
        if value is not None and not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value:g}" if isinstance(value, float)
                             else f"must be between {low} and {high}, got {value}")
        return value

    return AfterValidator(check)


def _side(low: int):
    """An image size: at least `low`, at most the configured max_side (read when a request is validated)."""

    def check(value):
        if value is not None and not low <= value <= LIMITS.max_side:
            raise ValueError(f"must be between {low} and {LIMITS.max_side} (the server's max side, "
                             f"--max-side), got {value}")
        return value

    return AfterValidator(check)


def _prompt(value):
    if value is not None:
        try:
            check_prompt(value)
        except PromptTooComplex as exc:
            raise ValueError(str(exc)) from None
    return value


Seed = Annotated[LenientInt, _within(MIN_SEED, MAX_SEED)]
Prompt = Annotated[str, AfterValidator(_prompt)]
Side = Annotated[LenientInt, _side(8)]
OptionalSide = Annotated[LenientInt, _side(0)]  # 0 = unset
SeedResize = Annotated[LenientInt, _side(-(2**31))]  # ≤ 0 = off (A1111's default -1, its UI's 0)


# The task id comes back in the X-Task-Id header: printable ASCII, no space at either end (A1111 takes any string).
TaskId = Annotated[str, Field(max_length=256, pattern=r"^(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?$")]


def Bounded(kind, low, high):  # noqa: N802 (reads as a type)
    return Annotated[kind, _within(low, high)]


def _finite_everywhere(value: Any, path: str = "") -> None:
    """Raise ValueError on the first non-finite float in a JSON value (iterative: nesting costs no stack)."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where or 'body'}: non-finite numbers (NaN, Infinity, 1e400) are not allowed")
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=False, protected_namespaces=(),
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_non_finite(cls, data: Any) -> Any:
        # Free-form fields (override_settings, script args, comments) are not typed: check the raw input whole.
        _finite_everywhere(data)
        return data


class GenerationRequest(_Lenient):
    """Fields common to txt2img and img2img, in A1111's schema order and with its API defaults."""

    prompt: Prompt | None = ""
    negative_prompt: Prompt | None = ""
    styles: list[str] | None = None
    seed: Seed | None = -1
    subseed: Seed | None = -1
    subseed_strength: Bounded(float, -1.0, 2.0) | None = 0.0
    seed_resize_from_h: SeedResize | None = -1
    seed_resize_from_w: SeedResize | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: Bounded(LenientInt, 1, MAX_IMAGES) | None = 1
    n_iter: Bounded(LenientInt, 1, MAX_IMAGES) | None = 1
    steps: Bounded(LenientInt, 1, MAX_STEPS) | None = 50
    cfg_scale: Bounded(float, -MAX_SCALE, MAX_SCALE) | None = 7.0
    width: Side | None = 512
    height: Side | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: Bounded(float, 0.0, MAX_NOISE) | None = None
    denoising_strength: Bounded(float, 0.0, 1.0) | None = None
    s_min_uncond: Bounded(float, 0.0, MAX_SIGMA) | None = None
    s_churn: Bounded(float, 0.0, MAX_CHURN) | None = None
    s_tmax: Bounded(float, 0.0, MAX_SIGMA) | None = None
    s_tmin: Bounded(float, 0.0, MAX_SIGMA) | None = None
    s_noise: Bounded(float, 0.0, MAX_NOISE) | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: Bounded(float, 0.0, 1.0) | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None


class Txt2ImgRequest(GenerationRequest):
    """`StableDiffusionProcessingTxt2Img` as the API accepts it."""

    enable_hr: bool | None = False
    firstphase_width: OptionalSide | None = 0
    firstphase_height: OptionalSide | None = 0
    hr_scale: Bounded(float, 0.0, MAX_HR_SCALE) | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: Bounded(LenientInt, 0, MAX_STEPS) | None = 0
    hr_resize_x: OptionalSide | None = 0
    hr_resize_y: OptionalSide | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: Prompt | None = ""
    hr_negative_prompt: Prompt | None = ""
    force_task_id: TaskId | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: Annotated[str, Field(max_length=MAX_INFOTEXT_CHARS)] | None = None


class Img2ImgRequest(GenerationRequest):
    """`StableDiffusionProcessingImg2Img` as the API accepts it (denoising_strength defaults to 0.75 here)."""

    denoising_strength: Bounded(float, 0.0, 1.0) | None = 0.75
    init_images: list[Any] | None = None
    resize_mode: Bounded(LenientInt, 0, 3) | None = 0
    image_cfg_scale: Bounded(float, -MAX_SCALE, MAX_SCALE) | None = None
    mask: str | None = None
    mask_blur_x: Bounded(LenientInt, 0, MAX_MASK_BLUR) | None = 4
    mask_blur_y: Bounded(LenientInt, 0, MAX_MASK_BLUR) | None = 4
    mask_blur: Bounded(LenientInt, 0, MAX_MASK_BLUR) | None = None
    mask_round: bool | None = True
    inpainting_fill: Bounded(LenientInt, 0, 3) | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: OptionalSide | None = 0
    inpainting_mask_invert: Bounded(LenientInt, 0, 1) | None = 0
    initial_noise_multiplier: Bounded(float, 0.0, MAX_NOISE) | None = None
    latent_mask: str | None = None
    force_task_id: TaskId | None = None
    sampler_index: str | None = "Euler"
    include_init_images: bool | None = False
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: Annotated[str, Field(max_length=MAX_INFOTEXT_CHARS)] | None = None


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

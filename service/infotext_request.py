"""The `infotext` request field (a1111-api.md §6.7): a pasted infotext fills the fields a client did not send and
adds the settings it names to `override_settings`, as A1111's `Api.apply_infotext` does."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from service.errors import InvalidRequest
from service.infotext import StyleExtractor, parse_infotext
from service.options import DEFAULTS
from service.sampler_names import get_sampler_and_scheduler
from service.sdapi_models import GenerationRequest, Txt2ImgRequest

Params = Mapping[str, Any]
Reader = Callable[[Params], Any]
CheckpointTitle = Callable[[str], str | None]
Request = TypeVar("Request", bound=GenerationRequest)


@dataclass(frozen=True)
class PasteField:
    """A request field A1111 fills from a pasted infotext: `params[label]`, or what `read(params)` computes."""

    api: str
    label: str
    read: Reader | None = None

    def value(self, params: Params) -> Any:
        return self.read(params) if self.read is not None else params.get(self.label)


def _enable_hr(params: Params) -> bool:
    # The parser always adds `Hires resize-1`, so in effect any infotext with a denoising strength enables hires.
    return "Denoising strength" in params and any(
        key in params for key in ("Hires upscale", "Hires upscaler", "Hires resize-1"))


def _styles(params: Params) -> list[str] | None:
    styles = params.get("Styles array")
    return styles if isinstance(styles, list) else None


def _scheduler(params: Params) -> str:
    return get_sampler_and_scheduler(params.get("Sampler"), params.get("Schedule type"))[1]


# txt2img's own paste fields that carry an `api` name (A1111 modules/ui.py). img2img's tab fields have none.
TXT2IMG_FIELDS: tuple[PasteField, ...] = (
    PasteField("prompt", "Prompt"),
    PasteField("negative_prompt", "Negative prompt"),
    PasteField("cfg_scale", "CFG scale"),
    PasteField("width", "Size-1"),
    PasteField("height", "Size-2"),
    PasteField("batch_size", "Batch size"),
    PasteField("styles", "Styles array", _styles),
    PasteField("denoising_strength", "Denoising strength"),
    PasteField("enable_hr", "Denoising strength", _enable_hr),
    PasteField("hr_scale", "Hires upscale"),
    PasteField("hr_upscaler", "Hires upscaler"),
    PasteField("hr_second_pass_steps", "Hires steps"),
    PasteField("hr_resize_x", "Hires resize-1"),
    PasteField("hr_resize_y", "Hires resize-2"),
    PasteField("hr_checkpoint_name", "Hires checkpoint"),
    PasteField("hr_sampler_name", "Hires sampler"),
    PasteField("hr_scheduler", "Hires schedule type"),
    PasteField("hr_prompt", "Hires prompt"),
    PasteField("hr_negative_prompt", "Hires negative prompt"),
)

# The built-in scripts' fields (Sampler, Seed; Refiner is added with a checkpoint lookup), on both tabs.
SCRIPT_FIELDS: tuple[PasteField, ...] = (
    PasteField("sampler_name", "Sampler"),
    PasteField("scheduler", "Schedule type", _scheduler),
    PasteField("steps", "Steps"),
    PasteField("seed", "Seed"),
    PasteField("subseed", "Variation seed"),
    PasteField("subseed_strength", "Variation seed strength"),
    # A1111 quirk: `Seed resize from: WxH` is pasted with width and height swapped.
    PasteField("seed_resize_from_h", "Seed resize from-1"),
    PasteField("seed_resize_from_w", "Seed resize from-2"),
    PasteField("refiner_switch_at", "Refiner switch at"),
)

# Options that declare an infotext label (A1111 shared_options.py `OptionInfo(..., infotext=...)`), in A1111's
# registration order. Labels are A1111's even where its writer uses another (it writes `Beta schedule alpha`
# but the option reads `Beta scheduler alpha`, so a pasted beta setting is ignored there too). Only options
# sdedge has (service/options.py DEFAULTS) are applied.
OPTION_LABELS: tuple[tuple[str, str], ...] = (
    ("face_restoration", "Face restoration"),
    ("sd_model_checkpoint", "Model hash"),
    ("emphasis", "Emphasis"),
    ("CLIP_stop_at_last_layers", "Clip skip"),
    ("randn_source", "RNG"),
    ("tiling", "Tiling"),
    ("hires_fix_refiner_pass", "Hires refiner"),
    ("sd_vae", "VAE"),
    ("sd_vae_encode_method", "VAE Encoder"),
    ("sd_vae_decode_method", "VAE Decoder"),
    ("inpainting_mask_weight", "Conditional mask weight"),
    ("initial_noise_multiplier", "Noise multiplier"),
    ("img2img_extra_noise", "Extra noise"),
    ("s_min_uncond", "NGMS"),
    ("s_min_uncond_all", "NGMS all steps"),
    ("token_merging_ratio", "Token merging ratio"),
    ("token_merging_ratio_hr", "Token merging ratio hr"),
    ("pad_cond_uncond", "Pad conds"),
    ("pad_cond_uncond_v0", "Pad conds v0"),
    ("use_old_scheduling", "Old prompt editing timelines"),
    ("use_downcasted_alpha_bar", "Downcast alphas_cumprod"),
    ("refiner_switch_by_sample_steps", "Refiner switch by sampling steps"),
    ("eta_ddim", "Eta DDIM"),
    ("eta_ancestral", "Eta"),
    ("s_churn", "Sigma churn"),
    ("s_tmin", "Sigma tmin"),
    ("s_tmax", "Sigma tmax"),
    ("s_noise", "Sigma noise"),
    ("sigma_min", "Schedule min sigma"),
    ("sigma_max", "Schedule max sigma"),
    ("rho", "Schedule rho"),
    ("eta_noise_seed_delta", "ENSD"),
    ("always_discard_next_to_last_sigma", "Discard penultimate sigma"),
    ("sgm_noise_multiplier", "SGM noise multiplier"),
    ("uni_pc_variant", "UniPC variant"),
    ("uni_pc_skip_type", "UniPC skip type"),
    ("uni_pc_order", "UniPC order"),
    ("uni_pc_lower_order_final", "UniPC lower order final"),
    ("sd_noise_schedule", "Noise Schedule"),
    ("skip_early_cond", "Skip Early CFG"),
    ("beta_dist_alpha", "Beta scheduler alpha"),
    ("beta_dist_beta", "Beta scheduler beta"),
)


def field_type(model: type[GenerationRequest], name: str) -> type:
    """The type A1111 casts a pasted value to: pydantic v1's `type_`, i.e. the field's type without Optional."""
    annotation = model.model_fields[name].annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) or annotation


def _cast(target: type, value: Any, field: str, source: str) -> Any:
    """`target(value)` unless it already is one; what A1111 cannot cast (a 500 there) is the client's 422."""
    if isinstance(value, target):
        return value
    try:
        return target(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(field, f"infotext value {source}: {value!r} is not a valid {target.__name__}") from None


def cast_option(key: str, value: Any, current: Any, defaults: Mapping[str, Any] = DEFAULTS) -> Any:
    """A1111's `Options.cast_value`: to the type of the option's default (else of its current value); for a
    bool only the text "False" is false."""
    default = defaults.get(key)
    if default is None:
        default = current
    if default is None:
        return None
    target = type(default)
    if target is bool and value == "False":
        return False
    try:
        return target(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(key, f"infotext value {value!r} is not a valid {target.__name__}") from None


def override_settings(params: Params, options: Mapping[str, Any],
                      defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """A1111's `get_override_settings`: option → pasted value, for every labelled option whose value differs
    from the current one. `Model hash` counts only when option `disable_weights_auto_swap` is off."""
    res: dict[str, Any] = {}
    for key, label in OPTION_LABELS:
        value = params.get(label)
        if key not in defaults or value is None:
            continue
        if key == "sd_model_checkpoint" and options.get("disable_weights_auto_swap", True):
            continue
        value = cast_option(key, value, options.get(key), defaults)
        if value != options.get(key):
            res[key] = value
    return res


def apply_infotext(req: Request, options: Mapping[str, Any], extract_styles: StyleExtractor | None = None,
                   checkpoint_title: CheckpointTitle | None = None) -> Request:
    """The request with its `infotext` applied (a1111-api.md §6.7): each mapped field the client did not send
    takes the pasted value, cast to the field's type; labelled settings join `override_settings` unless the
    client set that key. `options` are the server's current option values (not this request's overrides);
    `checkpoint_title(name)` finds the checkpoint a pasted `Refiner` names."""
    if not req.infotext:
        return req
    params = parse_infotext(req.infotext, options, extract_styles)
    fields = (TXT2IMG_FIELDS if isinstance(req, Txt2ImgRequest) else ()) + SCRIPT_FIELDS
    if checkpoint_title is not None:
        refiner = params.get("Refiner")
        fields += (PasteField("refiner_checkpoint", "Refiner",
                              lambda _: checkpoint_title(str(refiner)) if refiner else None),)
    model = type(req)
    updates: dict[str, Any] = {}
    for field in fields:
        if field.api in req.model_fields_set:
            continue
        value = field.value(params)
        if value is not None:
            updates[field.api] = _cast(field_type(model, field.api), value, field.api, field.label)
    overrides = dict(req.override_settings or {})
    for key, value in override_settings(params, options).items():
        overrides.setdefault(key, value)
    updates["override_settings"] = overrides
    return req.model_copy(update=updates)

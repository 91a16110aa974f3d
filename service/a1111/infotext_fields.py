"""The infotext's labels, one table for both directions: each row says how a plan writes its entry (A1111
`modules/processing.py: create_infotext` and the `extra_generation_params` its processing classes fill) and which
request field (`modules/ui.py`, `modules/scripts.py` paste fields with an `api` name) or option
(`modules/shared_options.py`, `OptionInfo(..., infotext=...)`) a pasted infotext fills from it.

Rows are in the order the entries are written; rows that write nothing exist for the paste direction only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.plan import GenerationPlan
from engine.samplers import SAMPLERS, TIMESTEPS
from service.a1111.sampler_names import get_sampler_and_scheduler

VERSION = "v1.10.1"  # the A1111 version whose infotext we reproduce; clients parse it (see docs/compatibility.md)

Params = Mapping[str, Any]
Reader = Callable[[Params], Any]


@dataclass(frozen=True)
class Source:
    """What image `index`'s infotext is written from: the plan, the pipeline's result (None before it ran) and
    the checkpoint's name and short hash."""

    plan: GenerationPlan
    index: int
    model_name: str | None = None
    model_hash: str | None = None
    result: Any = None  # engine.pipeline.GenerationResult


Writer = Callable[[Source], Any]  # the entry's value; None omits it


@dataclass(frozen=True)
class Paste:
    """A request field a pasted infotext fills: the parsed `params[key]` (`Size-1` for the W of `Size: WxH`),
    or what `read(params)` makes of them. `txt2img` fields belong to A1111's txt2img tab, the others to the
    built-in scripts that serve both tabs."""

    api: str
    key: str
    read: Reader | None = None
    txt2img: bool = True

    def value(self, params: Params) -> Any:
        return self.read(params) if self.read is not None else params.get(self.key)


@dataclass(frozen=True)
class Field:
    """One infotext label. `section` "hires" entries exist only with a hires pass; "hires" and "img2img" entries
    are the ones `info.extra_generation_params` repeats."""

    label: str
    write: Writer | None = None
    paste: tuple[Paste, ...] = ()
    option: str | None = None  # the option a pasted value sets through override_settings
    section: str = "main"


def schedule_label(sampler_default: str | None, scheduler: str) -> str:
    """`Schedule type`: the label actually used, or "Automatic" when the model's native schedule ran."""
    from engine.schedules import SCHEDULERS

    name = scheduler if scheduler != "automatic" else sampler_default
    return SCHEDULERS[name].label if name else "Automatic"


def _schedule_type(plan: GenerationPlan) -> str:
    return schedule_label(SAMPLERS[plan.sampler].default_scheduler, plan.scheduler)


def _eta(plan: GenerationPlan) -> float:
    # A1111 `is_sampler_using_eta_noise_seed_delta`: an unset eta is the sampler's, i.e. option eta_ancestral.
    return plan.eta if plan.eta is not None else plan.sampler_settings.eta_ancestral


def _ensd(s: Source) -> int | None:
    plan = s.plan
    uses = SAMPLERS[plan.sampler].options.get("uses_ensd")
    return plan.eta_noise_seed_delta if plan.eta_noise_seed_delta and uses and _eta(plan) != 0 else None


def _denoising(s: Source) -> float | None:
    denoising = s.plan.img2img or s.plan.hires
    return float(denoising.denoising_strength) if denoising else None


def _refined(s: Source) -> bool:
    return s.plan.refiner is not None and s.result is not None and s.result.refined


def _hires_schedule_type(s: Source) -> str | None:
    hr = s.plan.hires
    second = schedule_label(SAMPLERS[hr.sampler].default_scheduler, hr.scheduler)
    return second if second != _schedule_type(s.plan) else None


def _hires_resized(s: Source) -> bool:
    return bool(s.plan.hires.resize_x or s.plan.hires.resize_y)


def _mask(s: Source):
    return s.plan.img2img.mask if s.plan.img2img is not None else None


def _only_masked(s: Source) -> bool:
    return _mask(s) is not None and s.result is not None and s.result.paste_to is not None


def _masked_content(s: Source) -> str | None:
    mask = _mask(s)
    if mask is None or not (s.result is None or s.result.masked) or mask.masked_content == "original":
        return None
    return mask.masked_content


def _noise_multiplier(s: Source) -> float | None:
    i2i = s.plan.img2img
    return float(i2i.initial_noise_multiplier) if i2i is not None and i2i.initial_noise_multiplier != 1.0 else None


def _extra_noise(s: Source) -> float | None:
    extra = s.plan.sampler_settings.img2img_extra_noise
    return float(extra) if (s.plan.img2img is not None or s.plan.hires is not None) and extra > 0 else None


def _sampler_eta(timesteps: bool, neutral: float) -> Writer:
    """`Eta DDIM` for timestep samplers, `Eta` for k-diffusion ones: the eta in effect, if not the neutral one."""

    def write(s: Source) -> float | None:
        sampler, settings = SAMPLERS[s.plan.sampler], s.plan.sampler_settings
        if "eta" not in inspect.signature(sampler.function).parameters or (sampler.kind == TIMESTEPS) != timesteps:
            return None
        default = settings.eta_ddim if timesteps else settings.eta_ancestral
        eta = s.plan.eta if s.plan.eta is not None else default
        return float(eta) if eta != neutral else None

    return write


def _sigma(key: str, neutral: float) -> Writer:
    def write(s: Source) -> float | None:
        value = getattr(s.plan, key)
        return float(value) if key in SAMPLERS[s.plan.sampler].extra_params and value != neutral else None

    return write


def _beta(key: str) -> Writer:
    def write(s: Source) -> float | None:
        schedule = s.plan.sampler_settings.schedule
        custom = s.plan.scheduler == "beta" and (schedule.beta_alpha, schedule.beta_beta) != (0.6, 0.6)
        return getattr(schedule, key) if custom else None

    return write


def _sgm(s: Source) -> bool | None:
    # The first pass of txt2img only, and only k-diffusion samplers scale the initial noise (A1111
    # modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample).
    plan = s.plan
    on = plan.sampler_settings.sgm_noise_multiplier and plan.img2img is None
    return True if on and SAMPLERS[plan.sampler].kind != TIMESTEPS else None


def _emphasis(s: Source) -> str | None:
    plan, i = s.plan, s.index
    texts = (plan.prompts[i], plan.negative_prompts[i])
    return plan.emphasis if plan.emphasis != "Original" and any("(" in t or "[" in t for t in texts) else None


def _ngms(s: Source) -> bool:
    # A1111 (modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward) adds `NGMS` when a step skipped the uncond.
    return s.result is not None and bool(getattr(s.result, "ngms_applied", False))


def _enable_hr(params: Params) -> bool:
    # The parser always adds `Hires resize-1`, so in effect any infotext with a denoising strength enables hires.
    return "Denoising strength" in params and any(
        key in params for key in ("Hires upscale", "Hires upscaler", "Hires resize-1"))


def _styles(params: Params) -> list[str] | None:
    styles = params.get("Styles array")
    return styles if isinstance(styles, list) else None


def _scheduler(params: Params) -> str:
    return get_sampler_and_scheduler(params.get("Sampler"), params.get("Schedule type"))[1]


def _is(value: Any) -> Writer:
    return lambda s: value


FIELDS: tuple[Field, ...] = (
    # Pasted only: the prompt lines, and values the infotext does not write.
    Field("Prompt", paste=(Paste("prompt", "Prompt"),)),
    Field("Negative prompt", paste=(Paste("negative_prompt", "Negative prompt"),)),
    Field("Batch size", paste=(Paste("batch_size", "Batch size"),)),
    Field("Styles array", paste=(Paste("styles", "Styles array", _styles),)),
    # Read by service.a1111.infotext.parse_infotext itself (A1111 `parse_generation_parameters`): a legacy first-pass
    # size becomes Size + Hires resize, a hypernetwork joins the prompt, FP8 settings get their defaults.
    Field("First pass size"),
    Field("Hypernet"),
    Field("Hypernet strength"),
    Field("FP8 weight"),
    Field("Cache FP16 weight for LoRA"),
    # create_infotext's fixed slots.
    Field("Steps", lambda s: s.plan.steps, (Paste("steps", "Steps", txt2img=False),)),
    Field("Sampler", lambda s: s.plan.sampler, (Paste("sampler_name", "Sampler", txt2img=False),)),
    Field("Schedule type", lambda s: _schedule_type(s.plan),
          (Paste("scheduler", "Schedule type", _scheduler, txt2img=False),)),
    Field("CFG scale", lambda s: float(s.plan.cfg_scale), (Paste("cfg_scale", "CFG scale"),)),
    Field("Image CFG scale", lambda s: s.plan.img2img.image_cfg_scale if s.plan.img2img else None),
    Field("Seed", lambda s: s.plan.seeds[s.index], (Paste("seed", "Seed", txt2img=False),)),
    Field("Face restoration", lambda s: s.plan.report.face_restoration_model, option="face_restoration"),
    Field("Size", lambda s: f"{s.plan.width}x{s.plan.height}",
          (Paste("width", "Size-1"), Paste("height", "Size-2"))),
    Field("Model hash", lambda s: s.model_hash if s.plan.report.model_hash else None,
          option="sd_model_checkpoint"),
    Field("Model", lambda s: s.model_name if s.plan.report.model_name else None),
    Field("VAE hash", lambda s: s.plan.report.vae[1] if s.plan.report.vae and s.plan.report.vae_hash else None),
    Field("VAE", lambda s: s.plan.report.vae[0] if s.plan.report.vae and s.plan.report.vae_name else None,
          option="sd_vae"),
    Field("Variation seed", lambda s: s.plan.subseeds[s.index] if s.plan.subseed_strength else None,
          (Paste("subseed", "Variation seed", txt2img=False),)),
    Field("Variation seed strength",
          lambda s: float(s.plan.subseed_strength) if s.plan.subseed_strength else None,
          (Paste("subseed_strength", "Variation seed strength", txt2img=False),)),
    # A1111 quirk: `Seed resize from: WxH` is pasted with width and height swapped.
    Field("Seed resize from",
          lambda s: (f"{s.plan.seed_resize_from_w}x{s.plan.seed_resize_from_h}"
                     if s.plan.seed_resize_from_w > 0 and s.plan.seed_resize_from_h > 0 else None),
          (Paste("seed_resize_from_h", "Seed resize from-1", txt2img=False),
           Paste("seed_resize_from_w", "Seed resize from-2", txt2img=False))),
    Field("Denoising strength", _denoising,
          (Paste("denoising_strength", "Denoising strength"), Paste("enable_hr", "Denoising strength", _enable_hr))),
    Field("Conditional mask weight",
          lambda s: (float(s.plan.inpainting_mask_weight)
                     if s.result is not None and s.result.is_using_inpainting_conditioning else None),
          option="inpainting_mask_weight"),
    Field("Clip skip", lambda s: s.plan.clip_skip if s.plan.clip_skip > 1 else None,
          option="CLIP_stop_at_last_layers"),
    Field("ENSD", _ensd, option="eta_noise_seed_delta"),
    Field("Token merging ratio", option="token_merging_ratio"),
    Field("Token merging ratio hr", option="token_merging_ratio_hr"),
    Field("RNG", lambda s: s.plan.randn_source if s.plan.randn_source != "GPU" else None, option="randn_source"),
    Field("Tiling", lambda s: True if s.plan.tiling else None, option="tiling"),
    # txt2img hires (StableDiffusionProcessingTxt2Img.init, calculate_target_resolution).
    Field("Hires checkpoint", lambda s: s.plan.hires.checkpoint,  # short title `name [hash]`; None: same model
          (Paste("hr_checkpoint_name", "Hires checkpoint"),), section="hires"),
    Field("Hires sampler", lambda s: s.plan.hires.sampler if s.plan.hires.sampler != s.plan.sampler else None,
          (Paste("hr_sampler_name", "Hires sampler"),), section="hires"),
    Field("Hires prompt",
          lambda s: s.plan.hires.prompts[s.index] if s.plan.hires.prompts[s.index] != s.plan.prompts[s.index]
          else None, (Paste("hr_prompt", "Hires prompt"),), section="hires"),
    Field("Hires negative prompt",
          lambda s: (s.plan.hires.negative_prompts[s.index]
                     if s.plan.hires.negative_prompts[s.index] != s.plan.negative_prompts[s.index] else None),
          (Paste("hr_negative_prompt", "Hires negative prompt"),), section="hires"),
    Field("Hires schedule type", _hires_schedule_type, (Paste("hr_scheduler", "Hires schedule type"),),
          section="hires"),
    Field("Hires resize",
          lambda s: f"{s.plan.hires.resize_x}x{s.plan.hires.resize_y}" if _hires_resized(s) else None,
          (Paste("hr_resize_x", "Hires resize-1"), Paste("hr_resize_y", "Hires resize-2")), section="hires"),
    Field("Hires upscale", lambda s: None if _hires_resized(s) else float(s.plan.hires.scale),
          (Paste("hr_scale", "Hires upscale"),), section="hires"),
    Field("Hires steps", lambda s: s.plan.hires.requested_steps or None,
          (Paste("hr_second_pass_steps", "Hires steps"),), section="hires"),
    Field("Hires upscaler", lambda s: s.plan.hires.upscaler_label, (Paste("hr_upscaler", "Hires upscaler"),),
          section="hires"),
    # img2img (StableDiffusionProcessingImg2Img.init); its tab's fields have no `api` name, so none is pasted.
    Field("Mask mode", lambda s: "Inpaint not masked" if _mask(s) is not None and _mask(s).invert else None,
          section="img2img"),
    Field("Mask blur",
          lambda s: (_mask(s).blur_x if _mask(s) is not None and _mask(s).blur_x == _mask(s).blur_y
                     and _mask(s).blur_x > 0 else None), section="img2img"),
    Field("Inpaint area", lambda s: "Only masked" if _only_masked(s) else None, section="img2img"),
    Field("Masked area padding", lambda s: _mask(s).only_masked_padding if _only_masked(s) else None,
          section="img2img"),
    Field("Masked content", _masked_content, section="img2img"),
    Field("Noise multiplier", _noise_multiplier, option="initial_noise_multiplier", section="img2img"),
    Field("Extra noise", _extra_noise, option="img2img_extra_noise", section="img2img"),
    # Extra networks (extensions-builtin/Lora/extra_networks_lora.py: activate, before sampling).
    Field("Lora hashes", lambda s: s.plan.report.lora_hashes),
    # Textual inversion (modules/sd_hijack_clip.py: forward, while the prompts are encoded).
    Field("TI hashes", lambda s: s.plan.report.ti_hashes),
    # Sampling, schedule and prompt language (sd_samplers_*: the entries that differ from their defaults).
    Field("Eta DDIM", _sampler_eta(True, 0.0), option="eta_ddim"),
    Field("Eta", _sampler_eta(False, 1.0), option="eta_ancestral"),
    Field("Sigma churn", _sigma("s_churn", 0.0), option="s_churn"),
    Field("Sigma tmin", _sigma("s_tmin", 0.0), option="s_tmin"),
    Field("Sigma tmax", _sigma("s_tmax", float("inf")), option="s_tmax"),
    Field("Sigma noise", _sigma("s_noise", 1.0), option="s_noise"),
    Field("Discard penultimate sigma",
          lambda s: (True if s.plan.sampler_settings.always_discard_next_to_last_sigma
                     and not SAMPLERS[s.plan.sampler].discard_next_to_last_sigma else None),
          option="always_discard_next_to_last_sigma"),
    Field("Schedule min sigma", lambda s: s.plan.sampler_settings.schedule.sigma_min or None, option="sigma_min"),
    Field("Schedule max sigma", lambda s: s.plan.sampler_settings.schedule.sigma_max or None, option="sigma_max"),
    Field("Schedule rho", lambda s: s.plan.sampler_settings.schedule.rho or None, option="rho"),
    # A1111 writes `Beta schedule alpha` but its option reads `Beta scheduler alpha`, so a pasted beta setting
    # is ignored there too.
    Field("Beta schedule alpha", _beta("beta_alpha")),
    Field("Beta schedule beta", _beta("beta_beta")),
    Field("Beta scheduler alpha", option="beta_dist_alpha"),
    Field("Beta scheduler beta", option="beta_dist_beta"),
    Field("SGM noise multiplier", _sgm, option="sgm_noise_multiplier"),
    Field("NGMS", lambda s: float(s.plan.sampler_settings.s_min_uncond) if _ngms(s) else None, option="s_min_uncond"),
    Field("NGMS all steps", lambda s: True if _ngms(s) and s.plan.sampler_settings.s_min_uncond_all else None,
          option="s_min_uncond_all"),
    # A1111 writes it when a step skipped the uncond; step 0 does whenever the option is positive.
    Field("Skip Early CFG",
          lambda s: float(s.plan.sampler_settings.skip_early_cond) if s.plan.sampler_settings.skip_early_cond > 0
          else None, option="skip_early_cond"),
    Field("Pad conds", option="pad_cond_uncond"),
    Field("Pad conds v0", option="pad_cond_uncond_v0"),
    Field("VAE Encoder", option="sd_vae_encode_method"),
    Field("VAE Decoder", option="sd_vae_decode_method"),
    # Written when the refiner took over (A1111 modules/sd_samplers_common.py: apply_refiner).
    Field("Refiner", lambda s: s.plan.refiner.checkpoint if _refined(s) else None),
    # pasted as refiner_checkpoint through a checkpoint lookup (infotext_request.apply_infotext)
    Field("Refiner switch at", lambda s: s.plan.refiner.switch_at if _refined(s) else None,
          paste=(Paste("refiner_switch_at", "Refiner switch at", txt2img=False),)),
    Field("Hires refiner",
          lambda s: s.plan.refiner.hires_pass if _refined(s) and s.plan.hires and s.plan.refiner.hires_pass
          != "second pass" else None, option="hires_fix_refiner_pass"),
    Field("Refiner switch by sampling steps", lambda s: True if _refined(s) and s.plan.refiner.by_sample_steps
          else None, option="refiner_switch_by_sample_steps"),
    Field("Old prompt editing timelines", lambda s: True if s.plan.use_old_scheduling else None,
          option="use_old_scheduling"),
    Field("Downcast alphas_cumprod", option="use_downcasted_alpha_bar"),
    Field("Noise Schedule",
          lambda s: s.plan.sampler_settings.noise_schedule
          if s.plan.sampler_settings.noise_schedule == "Zero Terminal SNR" else None, option="sd_noise_schedule"),
    Field("UniPC variant", option="uni_pc_variant"),
    Field("UniPC skip type", option="uni_pc_skip_type"),
    Field("UniPC order", option="uni_pc_order"),
    Field("UniPC lower order final", option="uni_pc_lower_order_final"),
    Field("Emphasis", _emphasis, option="emphasis"),
    Field("Version", lambda s: VERSION if s.plan.report.version else None),
)

BY_LABEL: dict[str, Field] = {f.label: f for f in FIELDS}


def written(source: Source, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The entries of one image, in FIELDS order; None values stay (create_infotext omits them). `sections`
    keeps only rows of those sections; hires rows appear only with a hires pass."""
    params: dict[str, Any] = {}
    for f in FIELDS:
        if f.write is None or (sections is not None and f.section not in sections):
            continue
        if f.section == "hires" and source.plan.hires is None:
            continue
        params[f.label] = f.write(source)
    return params


def paste_fields(txt2img: bool) -> tuple[Paste, ...]:
    """The request fields a pasted infotext fills on a tab: txt2img's own and the scripts', or the scripts'."""
    return tuple(p for f in FIELDS for p in f.paste if txt2img or not p.txt2img)


OPTION_LABELS: tuple[tuple[str, str], ...] = tuple((f.option, f.label) for f in FIELDS if f.option)

"""A1111's infotext: the `parameters` text written into every image, and its parser (a1111-api.md §7)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

VERSION = "v1.10.1"  # the A1111 version whose infotext we reproduce; clients parse it (see docs/compatibility.md)


def quote(value: Any) -> str:
    """A value as A1111 writes it: str(), or json.dumps of the value itself (non-ASCII kept) if its str()
    contains `,`, `:` or a newline (so a list comes out as a JSON list, as A1111's `quote` does)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(value, ensure_ascii=False, default=str)


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """`prompt`, an optional `Negative prompt:` line, then `Key: value` pairs in the given order.

    Entries whose value is None are omitted; an entry whose value equals its key is written as the bare key.
    """
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


_PAIR = re.compile(r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)""")
_SIZE = re.compile(r"^(\d+)x(\d+)$")

StyleExtractor = Callable[[str, str], tuple[list[str], str, str]]

_V160 = Version("1.6.0")
_V170_TSNR = Version("v1.7.0-225")
_V180 = Version("1.8.0")
_V180_HR_STYLES = Version("1.8.0-139")


def parse_version(text: Any) -> Version | None:
    """`infotext_versions.parse_version`: "v1.10.1-89-g1937682a" → v1.10.1-89 (post-release 89); else None."""
    if text is None:
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", str(text))
    try:
        return Version(m.group(1) if m else str(text))
    except InvalidVersion:
        return None


def _unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:  # A1111 keeps the raw text on any decoding failure
        return text


def _old_hires_fix_params(res: dict[str, Any], use_old_hires_fix_width_height: bool) -> None:
    """`restore_old_hires_fix_params`: a legacy `First pass size` becomes Size + Hires resize."""
    firstpass_width = res.get("First pass size-1")
    firstpass_height = res.get("First pass size-2")
    if use_old_hires_fix_width_height:
        hires_width = int(res.get("Hires resize-1", 0))
        hires_height = int(res.get("Hires resize-2", 0))
        if hires_width and hires_height:
            res["Size-1"] = hires_width
            res["Size-2"] = hires_height
            return
    if firstpass_width is None or firstpass_height is None:
        return
    firstpass_width, firstpass_height = int(firstpass_width), int(firstpass_height)
    width = int(res.get("Size-1", 512))
    height = int(res.get("Size-2", 512))
    if firstpass_width == 0 or firstpass_height == 0:
        scale = math.sqrt(512 * 512 / (width * height))
        firstpass_width = math.ceil(scale * width / 64) * 64
        firstpass_height = math.ceil(scale * height / 64) * 64
    res["Size-1"] = firstpass_width
    res["Size-2"] = firstpass_height
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


def _backcompat(res: dict[str, Any]) -> None:
    """`infotext_versions.backcompat`: settings that older versions implied, keyed on `Version`."""
    ver = parse_version(res.get("Version"))
    if ver is None:
        return
    if ver < _V160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if ver < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def _uses_emphasis(prompt: str, negative_prompt: str) -> bool:
    from engine.prompt_parser import PromptTooComplex, parse_prompt_attention

    try:
        segments = parse_prompt_attention(prompt) + parse_prompt_attention(negative_prompt)
    except PromptTooComplex:  # brackets nested past the limit: emphasis, whatever the weights come to
        return True
    return len(segments) != len([s for s in segments if s[1] == 1.0 or s[0] == "BREAK"])


def parse_infotext(text: str, options: Mapping[str, Any] | None = None,
                   extract_styles: StyleExtractor | None = None) -> dict[str, Any]:
    """`parse_generation_parameters` (§7.3): infotext → dict, key for key and in A1111's key order.

    Parsed values are strings; the defaults A1111 adds keep their types. `extract_styles(prompt, negative)`
    returns (style names, prompt, negative) with those styles taken out, as `PromptStyles` does.
    """
    options = options or {}
    res: dict[str, Any] = {}
    prompt, negative_prompt = "", ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    if len(_PAIR.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for key, value in _PAIR.findall(lastline):
        if not value:
            continue  # A1111 fails on value[0] and skips the entry
        value = _unquote(value) if value[0] == '"' and value[-1] == '"' else value
        size = _SIZE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value

    infotext_styles = options.get("infotext_styles", "Apply if any")
    if extract_styles is not None and infotext_styles != "Ignore":
        found, prompt_no_styles, negative_no_styles = extract_styles(prompt, negative_prompt)
        same_hr_styles = True
        version = parse_version(res.get("Version"))
        if ("Hires prompt" in res or "Hires negative prompt" in res) and (
            version > _V180_HR_STYLES if version else True
        ):
            hr_prompt = res.get("Hires prompt", prompt)
            hr_negative = res.get("Hires negative prompt", negative_prompt)
            hr_found, hr_prompt_no_styles, hr_negative_no_styles = extract_styles(hr_prompt, hr_negative)
            same_hr_styles = found == hr_found
            if same_hr_styles:
                res["Hires prompt"] = "" if hr_prompt_no_styles == prompt_no_styles else hr_prompt_no_styles
                res["Hires negative prompt"] = (
                    "" if hr_negative_no_styles == negative_no_styles else hr_negative_no_styles
                )
        if same_hr_styles:
            prompt, negative_prompt = prompt_no_styles, negative_no_styles
            if (infotext_styles == "Apply if any" and found) or infotext_styles == "Apply":
                res["Styles array"] = found

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.setdefault("Clip skip", "1")
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, value in (("Hires sampler", "Use same sampler"), ("Hires schedule type", "Use same scheduler"),
                       ("Hires checkpoint", "Use same checkpoint"), ("Hires prompt", ""),
                       ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"),
                       ("Masked content", "original"), ("Inpaint area", "Whole picture"),
                       ("Masked area padding", 32)):
        res.setdefault(key, value)
    _old_hires_fix_params(res, bool(options.get("use_old_hires_fix_width_height", False)))
    for key, value in (("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0),
                       ("Schedule min sigma", 0), ("Schedule rho", 0), ("VAE Encoder", "Full"),
                       ("VAE Decoder", "Full"), ("FP8 weight", "Disable")):
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and _uses_emphasis(prompt, negative_prompt):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    if options.get("auto_backcompat", True):
        _backcompat(res)
    for key in options.get("infotext_skip_pasting", None) or ():
        res.pop(key, None)
    return res


def schedule_label(sampler_default: str | None, scheduler: str) -> str:
    """`Schedule type`: the label actually used, or "Automatic" when the model's native schedule ran."""
    from engine.schedules import SCHEDULERS

    name = scheduler if scheduler != "automatic" else sampler_default
    return SCHEDULERS[name].label if name else "Automatic"


def generation_parameters(plan, index: int, model_name: str | None, model_hash: str | None,
                          options: Mapping[str, Any], request: Mapping[str, Any] | None = None,
                          result=None) -> dict[str, Any]:
    """The ordered `Key: value` entries of image `index` of a plan (§7.1 slot order). `request` (the sdapi
    request as a dict) and the pipeline's `result` supply what hires fix and img2img add."""
    from engine.samplers import SAMPLERS

    sampler = SAMPLERS[plan.sampler]
    params: dict[str, Any] = {
        "Steps": plan.steps,
        "Sampler": plan.sampler,
        "Schedule type": schedule_label(sampler.default_scheduler, plan.scheduler),
        "CFG scale": float(plan.cfg_scale),
        "Image CFG scale": plan.img2img.image_cfg_scale if plan.img2img else None,
        "Seed": plan.seeds[index],
        "Size": f"{plan.width}x{plan.height}",
        "Model hash": model_hash if options.get("add_model_hash_to_info", True) else None,
        "Model": model_name if options.get("add_model_name_to_info", True) else None,
    }
    if plan.subseed_strength:
        params["Variation seed"] = plan.subseeds[index]
        params["Variation seed strength"] = float(plan.subseed_strength)
    if plan.seed_resize_from_w > 0 and plan.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{plan.seed_resize_from_w}x{plan.seed_resize_from_h}"
    denoising = plan.img2img or plan.hires
    params["Denoising strength"] = float(denoising.denoising_strength) if denoising else None
    if result is not None and result.is_using_inpainting_conditioning:
        params["Conditional mask weight"] = float(plan.inpainting_mask_weight)
    if plan.clip_skip > 1:
        params["Clip skip"] = plan.clip_skip
    # A1111 `is_sampler_using_eta_noise_seed_delta`: an unset eta is the sampler's, i.e. option eta_ancestral.
    eta = plan.eta if plan.eta is not None else float(options.get("eta_ancestral", 1.0))
    if plan.eta_noise_seed_delta and sampler.options.get("uses_ensd") and eta != 0:
        params["ENSD"] = plan.eta_noise_seed_delta
    if plan.randn_source != "GPU":
        params["RNG"] = plan.randn_source
    params.update(denoising_parameters(plan, index, request or {}, result))
    params.update(sampling_parameters(plan, index))
    if options.get("add_version_to_infotext", True):
        params["Version"] = VERSION
    return params


def denoising_parameters(plan, index: int, request: Mapping[str, Any], result=None) -> dict[str, Any]:
    """Hires fix's and img2img's extra entries in A1111's insertion order (§7.1); None values are omitted."""
    from engine.samplers import SAMPLERS

    params: dict[str, Any] = {}
    hr = plan.hires
    if hr is not None:
        params["Hires checkpoint"] = hr.checkpoint  # short title `name [hash]`; None (omitted) for the same model
        if hr.sampler != plan.sampler:
            params["Hires sampler"] = hr.sampler
        params["Hires prompt"] = hr.prompts[index] if hr.prompts[index] != plan.prompts[index] else None
        params["Hires negative prompt"] = (hr.negative_prompts[index]
                                           if hr.negative_prompts[index] != plan.negative_prompts[index] else None)
        first = schedule_label(SAMPLERS[plan.sampler].default_scheduler, plan.scheduler)
        second = schedule_label(SAMPLERS[hr.sampler].default_scheduler, hr.scheduler)
        params["Hires schedule type"] = second if second != first else None
        resize_x, resize_y = request.get("hr_resize_x") or 0, request.get("hr_resize_y") or 0
        if resize_x or resize_y:
            params["Hires resize"] = f"{resize_x}x{resize_y}"
        else:
            params["Hires upscale"] = float(request.get("hr_scale") or 2.0)
        params["Hires steps"] = request.get("hr_second_pass_steps") or None
        params["Hires upscaler"] = request.get("hr_upscaler")
    i2i = plan.img2img
    if i2i is not None:
        mask = i2i.mask
        if mask is not None:
            params["Mask mode"] = "Inpaint not masked" if mask.invert else None
            params["Mask blur"] = mask.blur_x if mask.blur_x == mask.blur_y and mask.blur_x > 0 else None
            if result is not None and result.paste_to is not None:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = mask.only_masked_padding
            if (result is None or result.masked) and mask.masked_content != "original":
                params["Masked content"] = mask.masked_content
        if i2i.initial_noise_multiplier != 1.0:
            params["Noise multiplier"] = float(i2i.initial_noise_multiplier)
    extra_noise = plan.sampler_settings.img2img_extra_noise
    if (i2i is not None or hr is not None) and extra_noise > 0:
        params["Extra noise"] = float(extra_noise)
    return params


def sampling_parameters(plan, index: int) -> dict[str, Any]:
    """Sampler, schedule and prompt-language entries A1111 adds when they differ from their defaults (§7.1)."""
    import inspect

    from engine.samplers import SAMPLERS, TIMESTEPS

    sampler = SAMPLERS[plan.sampler]
    settings = plan.sampler_settings
    params: dict[str, Any] = {}
    if "eta" in inspect.signature(sampler.function).parameters:
        if sampler.kind == TIMESTEPS:
            eta = plan.eta if plan.eta is not None else settings.eta_ddim
            params["Eta DDIM"] = float(eta) if eta != 0.0 else None
        else:
            eta = plan.eta if plan.eta is not None else settings.eta_ancestral
            params["Eta"] = float(eta) if eta != 1.0 else None
    for key, label, neutral in (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0),
                                ("s_tmax", "Sigma tmax", float("inf")), ("s_noise", "Sigma noise", 1.0)):
        value = getattr(plan, key)
        if key in sampler.extra_params and value != neutral:
            params[label] = float(value)
    if settings.always_discard_next_to_last_sigma and not sampler.discard_next_to_last_sigma:
        params["Discard penultimate sigma"] = True
    schedule = settings.schedule
    params["Schedule min sigma"] = schedule.sigma_min or None
    params["Schedule max sigma"] = schedule.sigma_max or None
    params["Schedule rho"] = schedule.rho or None
    if plan.scheduler == "beta" and (schedule.beta_alpha, schedule.beta_beta) != (0.6, 0.6):
        params["Beta schedule alpha"] = schedule.beta_alpha
        params["Beta schedule beta"] = schedule.beta_beta
    # The first pass of txt2img only, and only k-diffusion samplers scale the initial noise (§1.5).
    if settings.sgm_noise_multiplier and plan.img2img is None and sampler.kind != TIMESTEPS:
        params["SGM noise multiplier"] = True
    # A1111 writes it when a step skipped the uncond; step 0 does whenever the option is positive.
    params["Skip Early CFG"] = float(settings.skip_early_cond) if settings.skip_early_cond > 0 else None
    if plan.use_old_scheduling:
        params["Old prompt editing timelines"] = True
    if settings.noise_schedule == "Zero Terminal SNR":
        params["Noise Schedule"] = settings.noise_schedule
    texts = (plan.prompts[index], plan.negative_prompts[index])
    if plan.emphasis != "Original" and any("(" in t or "[" in t for t in texts):
        params["Emphasis"] = plan.emphasis
    return params

"""sdapi request → engine plan: the one place a request field is interpreted (A1111 modules/api/models.py;
modules/api/api.py: Api.text2imgapi)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from engine import image_ops
from engine.conditioning import SdxlOptions
from engine.img2img import hires_size, img2img_steps
from engine.plan import MASKED_CONTENT, GenerationPlan, HiresPlan, Img2ImgPlan, MaskPlan, RefinerPlan, Report
from engine.prompt_parser import (
    PromptTooComplex,
    batch_extra_networks,
    check_prompt,
    check_schedule,
    strip_comments,
)
from engine.samplers import SAMPLERS, TIMESTEPS
from service.a1111.errors import InvalidRequest, NotFound, RequestForbidden, RequestTooLarge
from service.a1111.extra_networks import with_networks
from service.a1111.image_io import ImageInputError, decode_image
from service.a1111.job_options import JobOptions
from service.a1111.sampler_names import resolve_sampler
from service.a1111.sdapi_models import LIMITS, GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from service.runtime.models import ModelEntry, ModelRegistry

MAX_SEED = 4294967294  # A1111: random.randrange(4294967294)
MAX_IMAGES = 64


def random_seed() -> int:
    return random.randrange(MAX_SEED)


def resolve_seed(seed: int | None) -> int:
    return random_seed() if seed is None or seed == -1 else int(seed)


def _positive_multiple_of_8(field: str, value: int | None, default: int) -> int:
    value = default if value is None else value
    if value <= 0 or value % 8 or value > LIMITS.max_side:
        raise InvalidRequest(field, f"must be a positive multiple of 8 up to {LIMITS.max_side}, got {value}")
    return value


def _at_least(field: str, value: int | None, default: int, minimum: int, maximum: int | None = None) -> int:
    value = default if value is None else value
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidRequest(field, f"must be {bound}, got {value}")
    return value


def _finite(field: str, value: float | None, default: float) -> float:
    value = default if value is None else float(value)
    if not math.isfinite(value):
        raise InvalidRequest(field, f"must be a finite number, got {value}")
    return value


def seeds_for(req: GenerationRequest, count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """all_seeds and all_subseeds (A1111 modules/processing.py: process_images_inner): seed + i, but every
    image gets `seed` when subseed_strength > 0."""
    seed = resolve_seed(req.seed)
    subseed = resolve_seed(req.subseed)
    strength = req.subseed_strength or 0.0
    seeds = tuple(seed if strength > 0 else seed + i for i in range(count))
    subseeds = tuple(subseed + i for i in range(count))
    return seeds, subseeds


def prompt_texts(prompt: str | None, negative: str | None, style_names: list[str] | None,
                 options: JobOptions | Mapping[str, Any], styles=None) -> tuple[str, str]:
    """The prompts as encoded and written to the infotext: styles applied (A1111 modules/styles.py:
    StyleDatabase.apply_styles_to_prompt), then `#` comments stripped."""
    prompt, negative = prompt or "", negative or ""
    if styles is not None:
        prompt, negative = styles.apply(prompt, negative, style_names)
    if JobOptions.of(options).enable_prompt_comments:
        prompt, negative = strip_comments(prompt), strip_comments(negative)
    for field, text in (("prompt", prompt), ("negative_prompt", negative)):  # styles applied: check again
        try:
            check_prompt(text, field)
        except PromptTooComplex as exc:
            raise InvalidRequest(field, str(exc)) from None
    return prompt, negative


def plan_txt2img(req: Txt2ImgRequest, options: JobOptions | Mapping[str, Any], upscalers=None, styles=None,
                 hires_model: ModelEntry | None = None, loras=None) -> GenerationPlan:
    """Validate and resolve a txt2img request. `upscalers` (an engine.upscalers.UpscalerRegistry) adds model
    upscalers to what `hr_upscaler` may name; `styles` (a service.a1111.styles.StyleDatabase) resolves the request's
    `styles`. `hires_model` is the other checkpoint of the hires pass (`hires_checkpoint`)."""
    options = JobOptions.of(options)
    if req.firstphase_width or req.firstphase_height:
        # Legacy first-pass size. A1111's `StableDiffusionProcessingTxt2Img.__post_init__` makes firstphase_* the
        # first pass's width×height, with or without enable_hr, and aims the hires pass at width×height; but
        # `calculate_target_resolution` (called by `init`) then recomputes that target from hr_scale or
        # hr_resize_x/y, so the final size the legacy fields meant is dropped, and Size and Hires upscale in the
        # infotext describe what ran.
        req = req.model_copy(update={
            "width": _positive_multiple_of_8("firstphase_width", req.firstphase_width, 0),
            "height": _positive_multiple_of_8("firstphase_height", req.firstphase_height, 0),
        })
    plan = _plan(req, options, styles=styles)
    if req.enable_hr:
        hires = _hires(req, plan, options, upscalers, styles)
        if hires_model is not None:
            hires = replace(hires, checkpoint=hires_model.title)
        plan = replace(plan, hires=hires,
                       report=replace(plan.report, denoising_strength=hires.denoising_strength))
    return with_networks(plan, req.disable_extra_networks, options, loras)


SAME_CHECKPOINT = "Use same checkpoint"


def hires_checkpoint(req: Txt2ImgRequest, models: ModelRegistry, current: ModelEntry) -> ModelEntry | None:
    """`hr_checkpoint_name` (A1111 modules/api/models.py: StableDiffusionTxt2ImgProcessingAPI): the checkpoint
    of the hires pass when it is not the job's own.

    Read only with `enable_hr`, as A1111 does. Null, "" and "Use same checkpoint" mean the same model, and so does
    a name of the job's checkpoint (the rule of A1111's dev branch, 1937682a: no switch, no
    `Hires checkpoint`). Names resolve
    as `sd_model_checkpoint` does (title, name, folder, hash). Unknown: a 422 where A1111 fails with a 500; a
    checkpoint whose latents the first pass's cannot continue (another architecture, latent channel count or
    VAE factor): a 422.
    """
    name = req.hr_checkpoint_name
    if not req.enable_hr or name in (None, "", SAME_CHECKPOINT):
        return None
    return _continuing_checkpoint("hr_checkpoint_name", name, models, current, "the first pass")


def _continuing_checkpoint(field: str, name: str, models: ModelRegistry, current: ModelEntry,
                           continued: str) -> ModelEntry | None:
    """The checkpoint `name` names to go on from `current`'s latents (hires pass, refiner): None for the job's own
    checkpoint (no switch); a 422 on `field` for an unknown name or a checkpoint of another latent space
    (architecture, latent channel count, VAE factor), which cannot go on from `continued`."""
    entry = models.find(name)
    if entry is None:
        raise InvalidRequest(field, f"Could not find checkpoint with name {name}")
    if entry == current:
        return None
    if entry.latent_space != current.latent_space:
        (arch, channels, factor), (arch0, channels0, factor0) = entry.latent_space, current.latent_space
        raise InvalidRequest(field, f"{entry.title} ({arch}, {channels}-channel latents at 1/{factor}) cannot "
                                    f"continue {continued} of {current.title} ({arch0}, {channels0}-channel "
                                    f"latents at 1/{factor0})")
    return entry


def _plan(req: GenerationRequest, options: JobOptions, styles=None) -> GenerationPlan:
    """The fields txt2img and img2img share."""
    width = _positive_multiple_of_8("width", req.width, 512)
    height = _positive_multiple_of_8("height", req.height, 512)
    steps = _at_least("steps", req.steps, 50, 1, 1000)
    batch_size = _at_least("batch_size", req.batch_size, 1, 1, MAX_IMAGES)
    n_iter = _at_least("n_iter", req.n_iter, 1, 1, MAX_IMAGES)
    if batch_size * n_iter > MAX_IMAGES:
        raise InvalidRequest("n_iter", f"batch_size × n_iter must be at most {MAX_IMAGES}")
    cfg_scale = _finite("cfg_scale", req.cfg_scale, 7.0)
    clip_skip = options.CLIP_stop_at_last_layers
    if not 1 <= clip_skip <= 12:
        raise InvalidRequest("CLIP_stop_at_last_layers", f"must be between 1 and 12, got {clip_skip}")
    sampler, scheduler = resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    count = batch_size * n_iter
    seeds, subseeds = seeds_for(req, count)
    prompt, negative = prompt_texts(req.prompt, req.negative_prompt, req.styles, options, styles)
    settings = options.sampler_settings(req.s_min_uncond)
    plan = GenerationPlan(
        prompts=(prompt,) * count,
        negative_prompts=(negative,) * count,
        seeds=seeds,
        subseeds=subseeds,
        subseed_strength=_finite("subseed_strength", req.subseed_strength, 0.0),
        seed_resize_from_w=req.seed_resize_from_w if req.seed_resize_from_w is not None else -1,
        seed_resize_from_h=req.seed_resize_from_h if req.seed_resize_from_h is not None else -1,
        width=width,
        height=height,
        steps=steps,
        cfg_scale=cfg_scale,
        sampler=sampler,
        scheduler=scheduler,
        batch_size=batch_size,
        n_iter=n_iter,
        clip_skip=clip_skip,
        eta=req.eta,
        s_churn=_option_or_request("s_churn", options.s_churn, req.s_churn, 0.0),
        s_tmin=_option_or_request("s_tmin", options.s_tmin, req.s_tmin, 0.0),
        s_tmax=_option_or_request("s_tmax", options.s_tmax, req.s_tmax, 0.0) or float("inf"),
        s_noise=_option_or_request("s_noise", options.s_noise, req.s_noise, 1.0),
        randn_source=options.randn_source,
        inpainting_mask_weight=options.inpainting_mask_weight,
        eta_noise_seed_delta=options.eta_noise_seed_delta,
        sampler_settings=settings,
        emphasis=options.emphasis,
        comma_padding_backtrack=options.comma_padding_backtrack,
        use_old_scheduling=options.use_old_scheduling,
        extra_networks=batch_extra_networks([prompt]),
        # A1111 modules/processing.py: process_images_inner, `p.tiling` (None: option tiling).
        tiling=bool(req.tiling if req.tiling is not None else options.tiling),
        report=_report(req, options),
        sdxl=sdxl_options(options),
    )
    _check_schedules(plan.prompts[0], plan.negative_prompts[0], plan.total_steps, None, plan.use_old_scheduling)
    return plan


def _report(req: GenerationRequest, options: JobOptions) -> Report:
    """What the response reports beyond the plan (A1111 `Processed.__init__`, `create_infotext`); txt2img's
    denoising_strength as sent, replaced by the pass's strength when one runs."""
    # A1111 modules/processing.py: `p.restore_faces` (None: option face_restoration).
    restore_faces = bool(req.restore_faces if req.restore_faces is not None else options.face_restoration)
    return Report(
        styles=tuple(req.styles or ()),
        denoising_strength=req.denoising_strength,
        restore_faces=restore_faces,
        # A1111 `Processed`: face_restoration_model is the option's value when restoring, else None.
        face_restoration_model=options.face_restoration_model if restore_faces else None,
        code_former_weight=options.code_former_weight,
        model_hash=options.add_model_hash_to_info,
        model_name=options.add_model_name_to_info,
        version=options.add_version_to_infotext,
        vae_name=options.add_vae_name_to_info,
        vae_hash=options.add_vae_hash_to_info,
        warnings=options.unimplemented,
    )


def _check_schedules(prompt: str, negative: str, steps: int, hires_steps: int | None, old: bool) -> None:
    """Each schedule's texts are all encoded: bounded here, so a job never starts that cannot fit."""
    for field, text in (("prompt", prompt), ("negative_prompt", negative)):
        try:
            check_schedule(text, steps, hires_steps, old, field)
        except PromptTooComplex as exc:
            raise InvalidRequest(field, str(exc)) from None


def _option_or_request(key: str, option: float, requested: float | None, neutral: float) -> float:
    """A1111 quirk: the option wins when it differs from its neutral value, else the request's value."""
    if option != neutral:
        return option
    return _finite(key, requested, option)


def _strength(value: float | None, default: float) -> float:
    strength = _finite("denoising_strength", value, default)
    if not 0.0 <= strength <= 1.0:
        raise InvalidRequest("denoising_strength", f"must be between 0 and 1, got {strength}")
    return strength


def _hires(req: Txt2ImgRequest, plan: GenerationPlan, options: JobOptions, upscalers=None,
           styles=None) -> HiresPlan:
    """Hires fix (A1111 modules/processing.py: StableDiffusionProcessingTxt2Img.sample_hr_pass). A1111 crashes
    without denoising_strength: we take the UI's 0.7."""
    strength = _strength(req.denoising_strength, 0.7)
    scale = _finite("hr_scale", req.hr_scale, 2.0)
    resize_x = _at_least("hr_resize_x", req.hr_resize_x, 0, 0, LIMITS.max_side)
    resize_y = _at_least("hr_resize_y", req.hr_resize_y, 0, 0, LIMITS.max_side)
    if not resize_x and not resize_y and not 0 < scale <= LIMITS.max_side / max(plan.width, plan.height):
        raise InvalidRequest("hr_scale", f"must be positive and keep the image within {LIMITS.max_side} px, "
                                         f"got {scale}")
    size = hires_size(plan.width, plan.height, scale, resize_x, resize_y)
    final_w, final_h = size.final_size()
    if min(final_w, final_h) < 8 or max(size.width, size.height) > LIMITS.max_side:
        raise InvalidRequest("hr_scale", f"gives a {final_w}x{final_h} image; sides must be 8 to "
                                         f"{LIMITS.max_side} px")
    upscaler = req.hr_upscaler or "Latent"
    model = None
    if upscaler not in image_ops.LATENT_UPSCALE_MODES and upscaler not in image_ops.UPSCALERS:
        model = upscalers.get(upscaler) if upscalers is not None else None
        if model is None:
            raise InvalidRequest("hr_upscaler", f"could not find upscaler named {upscaler}")
    sampler = plan.sampler if req.hr_sampler_name in (None, "", "Use same sampler") else req.hr_sampler_name
    if sampler not in SAMPLERS:
        raise InvalidRequest("hr_sampler_name", f"bad sampler name: {sampler}")
    if req.hr_scheduler in (None, "Use same scheduler"):
        scheduler = plan.scheduler
    else:
        scheduler = resolve_sampler(sampler, req.hr_scheduler)[1]
    requested_steps = _at_least("hr_second_pass_steps", req.hr_second_pass_steps, 0, 0, 1000)
    steps = requested_steps or plan.steps
    # The second pass is given its step count explicitly, so A1111's fixed-steps formula always applies.
    check_denoising_schedule("denoising_strength", sampler, steps, strength, fix_steps=True)
    count = len(plan.prompts)
    hr_prompt, hr_negative = prompt_texts(req.hr_prompt, req.hr_negative_prompt, req.styles, options, styles)
    hires = HiresPlan(
        width=size.width, height=size.height, truncate_x=size.truncate_x, truncate_y=size.truncate_y,
        upscaler=upscaler, image_upscaler=model, sampler=sampler, scheduler=scheduler, steps=steps,
        denoising_strength=strength,
        prompts=(hr_prompt,) * count if req.hr_prompt else plan.prompts,
        negative_prompts=(hr_negative,) * count if req.hr_negative_prompt else plan.negative_prompts,
        resize_x=resize_x, resize_y=resize_y, scale=scale, requested_steps=requested_steps,
        upscaler_label=req.hr_upscaler,
    )
    _check_schedules(hires.prompts[0], hires.negative_prompts[0], plan.total_steps,
                     SAMPLERS[sampler].total_steps(steps), plan.use_old_scheduling)
    return hires


MAX_SCHEDULE_STEPS = 100_000  # a fixed-steps schedule for a tiny strength; A1111 builds it however long


def check_denoising_schedule(field: str, sampler: str, steps: int, strength: float, fix_steps: bool) -> None:
    """Refuse a strength whose schedule the pipeline could not build, without the model's σ (A1111
    modules/sd_samplers_common.py: setup_img2img_steps): fixed steps build int(steps / strength) σ, and
    timestep samplers have at most one per training timestep
    (A1111 fails there, `range()` with step 0: engine.timestep_samplers.ddim_timesteps)."""
    total, _ = img2img_steps(steps, strength, fix_steps)
    limit = 1000 if SAMPLERS[sampler].kind == TIMESTEPS else MAX_SCHEDULE_STEPS
    if total > limit:
        raise InvalidRequest(field, f"{strength} with {steps} fixed steps needs a schedule of {total} steps; "
                                    f"{sampler} allows at most {limit}")


# image_io's status for an input it refuses → the domain exception (413 too large, 403 fetch refused, else 422)
_IMAGE_ERRORS: dict[int, type[InvalidRequest]] = {413: RequestTooLarge, 403: RequestForbidden}


def _image(field: str, value: Any, options: JobOptions):
    try:
        return decode_image(value, options.image_limits())
    except ImageInputError as exc:
        raise _IMAGE_ERRORS.get(exc.status_code, InvalidRequest)(field, str(exc)) from None


MAX_MASK_BLUR = 64  # A1111's UI slider maximum; the blur costs O(kernel) per pixel


def plan_img2img(req: Img2ImgRequest, options: JobOptions | Mapping[str, Any], edit_model: bool = False,
                 styles=None, loras=None) -> GenerationPlan:
    """Validate and resolve an img2img request: decode images, check the mask, count steps for the strength."""
    options = JobOptions.of(options)
    if req.init_images is None:
        raise NotFound("Init image not found")
    if not req.init_images:
        raise InvalidRequest("init_images", "needs at least one image")
    images = tuple(_image(f"init_images[{i}]", v, options) for i, v in enumerate(req.init_images))
    batch_size = _at_least("batch_size", req.batch_size, 1, 1, MAX_IMAGES)
    if len(images) > batch_size:
        raise InvalidRequest("init_images", f"bad number of images passed: {len(images)}; expecting {batch_size} "
                                            "or less")
    resize_mode = _at_least("resize_mode", req.resize_mode, 0, 0, 3)
    strength = _strength(req.denoising_strength, 0.75)
    # Mask fields are checked even without a mask: a bad value is the client's mistake either way.
    blur_x, blur_y = ((req.mask_blur, req.mask_blur) if req.mask_blur is not None
                      else (req.mask_blur_x, req.mask_blur_y))
    blur_x = _at_least("mask_blur_x", blur_x, 4, 0, MAX_MASK_BLUR)
    blur_y = _at_least("mask_blur_y", blur_y, 4, 0, MAX_MASK_BLUR)
    invert = bool(_at_least("inpainting_mask_invert", req.inpainting_mask_invert, 0, 0, 1))
    masked_content = MASKED_CONTENT[_at_least("inpainting_fill", req.inpainting_fill, 0, 0, 3)]
    padding = _at_least("inpaint_full_res_padding", req.inpaint_full_res_padding, 0, 0, LIMITS.max_side)
    mask = None
    if req.mask is not None:
        mask_image = _image("mask", req.mask, options)
        for i, image in enumerate(images):
            if image.size != mask_image.size:
                raise InvalidRequest("mask", f"is {mask_image.width}x{mask_image.height} but init_images[{i}] is "
                                             f"{image.width}x{image.height}; they must be the same size")
        mask = MaskPlan(
            image=mask_image, blur_x=blur_x, blur_y=blur_y, round=req.mask_round is not False, invert=invert,
            masked_content=masked_content, only_masked=req.inpaint_full_res is not False,
            only_masked_padding=padding,
        )
    if resize_mode == image_ops.LATENT_UPSCALE and len({im.size for im in images}) > 1:
        raise InvalidRequest("init_images", "resize_mode 3 (latent upscale) needs init images of one size")
    fix_steps = options.img2img_fix_steps
    plan = _plan(req, options, styles=styles)
    check_denoising_schedule("denoising_strength", plan.sampler, plan.steps, strength, fix_steps)
    if mask is not None and not mask.only_masked and resize_mode == image_ops.LATENT_UPSCALE:
        if any(image.size != (plan.width, plan.height) for image in images):
            raise InvalidRequest("resize_mode", "3 (latent upscale) with a whole-picture mask needs init images "
                                                "of width×height")
    img2img = Img2ImgPlan(
        init_images=images,
        denoising_strength=strength,
        resize_mode=resize_mode,
        mask=mask,
        initial_noise_multiplier=_finite(
            "initial_noise_multiplier", req.initial_noise_multiplier, options.initial_noise_multiplier
        ),
        # Only instruct-pix2pix models read it; A1111 forces it to None for every other model.
        image_cfg_scale=(_finite("image_cfg_scale", req.image_cfg_scale, 1.0)
                         if edit_model and req.image_cfg_scale is not None else None),
        background_color=options.img2img_background_color,
        overlay=options.overlay_inpaint,
        color_correction=options.img2img_color_correction,
        fix_steps=fix_steps,
    )
    # One init image serves the whole batch; several set the batch size (A1111's seeds stay as counted before).
    plan = replace(plan, img2img=img2img, batch_size=batch_size if len(images) == 1 else len(images),
                   report=replace(plan.report, denoising_strength=strength))
    return with_networks(plan, req.disable_extra_networks, options, loras)


def sdxl_options(options: JobOptions) -> SdxlOptions:
    """Options sdxl_crop_top/left, sdxl_refiner_*_aesthetic_score and sdxl_clip_l_skip (A1111
    modules/sd_models_xl.py: get_learned_conditioning; modules/sd_hijack_clip.py); the size is each pass's."""
    return SdxlOptions(crop_top=int(options.sdxl_crop_top), crop_left=int(options.sdxl_crop_left),
                       high_aesthetic_score=float(options.sdxl_refiner_high_aesthetic_score),
                       low_aesthetic_score=float(options.sdxl_refiner_low_aesthetic_score),
                       clip_l_skip=bool(options.sdxl_clip_l_skip))


NO_REFINER = (None, "", "None", "none")


def refiner_checkpoint(req: GenerationRequest, models: ModelRegistry, current: ModelEntry) -> ModelEntry | None:
    """`refiner_checkpoint` (A1111 modules/processing.py: process_images; modules/sd_samplers_common.py:
    apply_refiner): the checkpoint the sampler continues on. "", "None", "none" and null: no refiner; the job's
    own checkpoint: no switch (A1111 skips it when the refiner is the loaded model). Unknown: a 422 where A1111
    fails with a 500; a checkpoint of another latent space (architecture, channels, VAE factor): a 422."""
    name = req.refiner_checkpoint
    if name in NO_REFINER:
        return None
    return _continuing_checkpoint("refiner_checkpoint", name, models, current, "the latents")


def with_refiner(plan: GenerationPlan, req: GenerationRequest, options: JobOptions,
                 refiner: ModelEntry | None) -> GenerationPlan:
    """The plan with its RefinerPlan: `refiner_switch_at` (null: from the first step) and the options
    refiner_switch_by_sample_steps and hires_fix_refiner_pass."""
    if refiner is None:
        return plan
    return replace(plan, refiner=RefinerPlan(refiner.title, req.refiner_switch_at,
                                             bool(options.refiner_switch_by_sample_steps),
                                             str(options.hires_fix_refiner_pass)))

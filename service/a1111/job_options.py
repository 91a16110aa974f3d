"""The options one job runs with, typed and frozen: built once per job from the merged option values (server
options + the request's `override_settings`), so the job path reads attributes, not a dict with defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.samplers import SamplerSettings
from engine.schedules import ScheduleOptions
from service.a1111.image_io import ImageLimits
from service.runtime.options import DEFAULTS, unimplemented_warnings


def _cast(value: Any, default: Any) -> Any:
    """A1111's `Options.cast_value`: to the type of the option's default; for a bool only the text "False" is
    false. None (a key the mapping lacks) is the default."""
    if value is None:
        value = default
    if default is None:
        return value
    if isinstance(default, bool):
        return False if value == "False" else bool(value)
    if isinstance(default, list | tuple):
        return tuple(value)
    return type(default)(value)


@dataclass(frozen=True)
class JobOptions:
    """The options the job path reads, each under its A1111 key. Defaults are service.runtime.options.DEFAULTS."""

    sd_model_checkpoint: str | None = DEFAULTS["sd_model_checkpoint"]
    sd_vae: str = DEFAULTS["sd_vae"]  # resolved per checkpoint by service/runtime/vae.py
    sd_vae_overrides_per_model_preferences: bool = DEFAULTS["sd_vae_overrides_per_model_preferences"]
    # prompts and conditioning
    CLIP_stop_at_last_layers: int = DEFAULTS["CLIP_stop_at_last_layers"]
    enable_prompt_comments: bool = DEFAULTS["enable_prompt_comments"]
    emphasis: str = DEFAULTS["emphasis"]
    comma_padding_backtrack: int = DEFAULTS["comma_padding_backtrack"]
    use_old_scheduling: bool = DEFAULTS["use_old_scheduling"]
    # noise
    randn_source: str = DEFAULTS["randn_source"]
    eta_noise_seed_delta: int = DEFAULTS["eta_noise_seed_delta"]
    # sampler settings (→ SamplerSettings)
    eta_ancestral: float = DEFAULTS["eta_ancestral"]
    eta_ddim: float = DEFAULTS["eta_ddim"]
    s_churn: float = DEFAULTS["s_churn"]
    s_tmin: float = DEFAULTS["s_tmin"]
    s_tmax: float = DEFAULTS["s_tmax"]
    s_noise: float = DEFAULTS["s_noise"]
    s_min_uncond: float = DEFAULTS["s_min_uncond"]
    s_min_uncond_all: bool = DEFAULTS["s_min_uncond_all"]
    always_discard_next_to_last_sigma: bool = DEFAULTS["always_discard_next_to_last_sigma"]
    sigma_min: float = DEFAULTS["sigma_min"]
    sigma_max: float = DEFAULTS["sigma_max"]
    rho: float = DEFAULTS["rho"]
    beta_dist_alpha: float = DEFAULTS["beta_dist_alpha"]
    beta_dist_beta: float = DEFAULTS["beta_dist_beta"]
    use_old_karras_scheduler_sigmas: bool = DEFAULTS["use_old_karras_scheduler_sigmas"]
    skip_early_cond: float = DEFAULTS["skip_early_cond"]
    pad_cond_uncond: bool = DEFAULTS["pad_cond_uncond"]
    pad_cond_uncond_v0: bool = DEFAULTS["pad_cond_uncond_v0"]
    img2img_extra_noise: float = DEFAULTS["img2img_extra_noise"]
    sgm_noise_multiplier: bool = DEFAULTS["sgm_noise_multiplier"]
    sd_noise_schedule: str = DEFAULTS["sd_noise_schedule"]
    uni_pc_variant: str = DEFAULTS["uni_pc_variant"]
    uni_pc_skip_type: str = DEFAULTS["uni_pc_skip_type"]
    uni_pc_order: int = DEFAULTS["uni_pc_order"]
    uni_pc_lower_order_final: bool = DEFAULTS["uni_pc_lower_order_final"]
    # img2img and inpainting
    img2img_fix_steps: bool = DEFAULTS["img2img_fix_steps"]
    initial_noise_multiplier: float = DEFAULTS["initial_noise_multiplier"]
    inpainting_mask_weight: float = DEFAULTS["inpainting_mask_weight"]
    img2img_background_color: str = DEFAULTS["img2img_background_color"]
    overlay_inpaint: bool = DEFAULTS["overlay_inpaint"]
    img2img_color_correction: bool = DEFAULTS["img2img_color_correction"]
    # input images (A1111 `api_*`, restricted: only the server's options set them)
    api_enable_requests: bool = DEFAULTS["api_enable_requests"]
    api_forbid_local_requests: bool = DEFAULTS["api_forbid_local_requests"]
    api_useragent: str = DEFAULTS["api_useragent"]
    # the response: images and infotext
    samples_format: str = DEFAULTS["samples_format"]
    jpeg_quality: int = DEFAULTS["jpeg_quality"]
    webp_lossless: bool = DEFAULTS["webp_lossless"]
    enable_pnginfo: bool = DEFAULTS["enable_pnginfo"]
    return_mask: bool = DEFAULTS["return_mask"]
    return_mask_composite: bool = DEFAULTS["return_mask_composite"]
    face_restoration: bool = DEFAULTS["face_restoration"]
    tiling: bool = DEFAULTS["tiling"]
    face_restoration_model: str = DEFAULTS["face_restoration_model"]
    code_former_weight: float = DEFAULTS["code_former_weight"]
    add_model_hash_to_info: bool = DEFAULTS["add_model_hash_to_info"]
    add_model_name_to_info: bool = DEFAULTS["add_model_name_to_info"]
    add_version_to_infotext: bool = DEFAULTS["add_version_to_infotext"]
    add_vae_name_to_info: bool = DEFAULTS["add_vae_name_to_info"]
    add_vae_hash_to_info: bool = DEFAULTS["add_vae_hash_to_info"]
    live_previews_image_format: str = DEFAULTS["live_previews_image_format"]
    # grids and saving (service/a1111/results.py, service/a1111/saving.py)
    return_grid: bool = DEFAULTS["return_grid"]
    grid_only_if_multiple: bool = DEFAULTS["grid_only_if_multiple"]
    n_rows: int = DEFAULTS["n_rows"]
    grid_prevent_empty_spots: bool = DEFAULTS["grid_prevent_empty_spots"]
    grid_background_color: str = DEFAULTS["grid_background_color"]
    samples_save: bool = DEFAULTS["samples_save"]
    grid_save: bool = DEFAULTS["grid_save"]
    grid_format: str = DEFAULTS["grid_format"]
    save_incomplete_images: bool = DEFAULTS["save_incomplete_images"]
    samples_filename_pattern: str = DEFAULTS["samples_filename_pattern"]
    save_images_add_number: bool = DEFAULTS["save_images_add_number"]
    save_images_replace_action: str = DEFAULTS["save_images_replace_action"]
    grid_extended_filename: bool = DEFAULTS["grid_extended_filename"]
    save_mask: bool = DEFAULTS["save_mask"]
    save_mask_composite: bool = DEFAULTS["save_mask_composite"]
    export_for_4chan: bool = DEFAULTS["export_for_4chan"]
    img_downscale_threshold: float = DEFAULTS["img_downscale_threshold"]
    target_side_length: int = DEFAULTS["target_side_length"]
    outdir_txt2img_samples: str = DEFAULTS["outdir_txt2img_samples"]
    outdir_img2img_samples: str = DEFAULTS["outdir_img2img_samples"]
    outdir_txt2img_grids: str = DEFAULTS["outdir_txt2img_grids"]
    outdir_img2img_grids: str = DEFAULTS["outdir_img2img_grids"]
    save_to_dirs: bool = DEFAULTS["save_to_dirs"]
    grid_save_to_dirs: bool = DEFAULTS["grid_save_to_dirs"]
    directories_filename_pattern: str = DEFAULTS["directories_filename_pattern"]
    directories_max_prompt_words: int = DEFAULTS["directories_max_prompt_words"]
    save_txt: bool = DEFAULTS["save_txt"]
    # reading a pasted infotext
    infotext_styles: str = DEFAULTS["infotext_styles"]
    use_old_hires_fix_width_height: bool = DEFAULTS["use_old_hires_fix_width_height"]
    auto_backcompat: bool = DEFAULTS["auto_backcompat"]
    infotext_skip_pasting: tuple[str, ...] = tuple(DEFAULTS["infotext_skip_pasting"])
    disable_weights_auto_swap: bool = DEFAULTS["disable_weights_auto_swap"]
    sd_lora: str = DEFAULTS["sd_lora"]
    extra_networks_default_multiplier: float = DEFAULTS["extra_networks_default_multiplier"]
    lora_add_hashes_to_infotext: bool = DEFAULTS["lora_add_hashes_to_infotext"]
    textual_inversion_add_hashes_to_infotext: bool = DEFAULTS["textual_inversion_add_hashes_to_infotext"]
    lora_bundled_ti_to_infotext: bool = DEFAULTS["lora_bundled_ti_to_infotext"]
    # SDXL (engine.conditioning.SdxlOptions) and the refiner (engine.plan.RefinerPlan)
    sdxl_clip_l_skip: bool = DEFAULTS["sdxl_clip_l_skip"]
    sdxl_crop_top: int = DEFAULTS["sdxl_crop_top"]
    sdxl_crop_left: int = DEFAULTS["sdxl_crop_left"]
    sdxl_refiner_low_aesthetic_score: float = DEFAULTS["sdxl_refiner_low_aesthetic_score"]
    sdxl_refiner_high_aesthetic_score: float = DEFAULTS["sdxl_refiner_high_aesthetic_score"]
    hires_fix_refiner_pass: str = DEFAULTS["hires_fix_refiner_pass"]
    refiner_switch_by_sample_steps: bool = DEFAULTS["refiner_switch_by_sample_steps"]
    # Not an option: one sentence per option in effect that sdedge stores but does not implement.
    unimplemented: tuple[str, ...] = ()
    # Not an option (a client cannot set it): the server's --allow-local-images folder.
    local_images_dir: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> JobOptions:
        """The typed options of `values` (option key → value; keys it lacks take their default)."""
        typed = {name: _cast(values.get(name), DEFAULTS[name]) for name in OPTION_KEYS}
        warnings = tuple(unimplemented_warnings(values)) if isinstance(values, Mapping) else ()
        return cls(**typed, unimplemented=warnings)

    @classmethod
    def of(cls, options: JobOptions | Mapping[str, Any] | None) -> JobOptions:
        """`options` as JobOptions; a mapping (a caller outside the job path, a test) is converted once."""
        if isinstance(options, JobOptions):
            return options
        return cls.from_mapping(options or {})

    def sampler_settings(self, s_min_uncond: float | None = None) -> SamplerSettings:
        """The sampler settings among these options (A1111 modules/shared_options.py); `s_min_uncond` is the
        request's value,
        which wins over the option's."""
        return SamplerSettings(
            eta_ancestral=self.eta_ancestral,
            eta_ddim=self.eta_ddim,
            s_min_uncond=float(s_min_uncond) if s_min_uncond is not None else self.s_min_uncond,
            s_min_uncond_all=self.s_min_uncond_all,
            always_discard_next_to_last_sigma=self.always_discard_next_to_last_sigma,
            uni_pc_variant=self.uni_pc_variant,
            uni_pc_skip_type=self.uni_pc_skip_type,
            uni_pc_order=self.uni_pc_order,
            uni_pc_lower_order_final=self.uni_pc_lower_order_final,
            schedule=ScheduleOptions(
                sigma_min=self.sigma_min,
                sigma_max=self.sigma_max,
                rho=self.rho,
                beta_alpha=self.beta_dist_alpha,
                beta_beta=self.beta_dist_beta,
                old_karras_sigmas=self.use_old_karras_scheduler_sigmas,
            ),
            skip_early_cond=self.skip_early_cond,
            pad_cond_uncond="v0" if self.pad_cond_uncond_v0 else "empty" if self.pad_cond_uncond else "",
            img2img_extra_noise=self.img2img_extra_noise,
            sgm_noise_multiplier=self.sgm_noise_multiplier,
            noise_schedule=self.sd_noise_schedule,
        )

    def image_limits(self) -> ImageLimits:
        """What an input image string may be (URLs fetched or not, and how)."""
        return ImageLimits(allow_urls=self.api_enable_requests, forbid_local_urls=self.api_forbid_local_requests,
                           user_agent=self.api_useragent,
                           local_dir=Path(self.local_images_dir) if self.local_images_dir else None)


OPTION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(JobOptions)
                                     if f.name not in ("unimplemented", "local_images_dir"))

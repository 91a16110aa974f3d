"""Server options with A1111's names and defaults (A1111 modules/shared_options.py), persisted atomically to a
JSON file."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.a1111.a1111_options import A1111_DEFAULTS, CLIENT_KEYS, INFO_ONLY
from service.a1111.sdapi_models import OPTION_RANGES
from service.runtime.atomic_write import write_atomic

log = logging.getLogger(__name__)

# Options sdedge honours, with A1111's defaults. Keys and types follow A1111 so clients can read and write them.
DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_checkpoint_hash": "",
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "randn_source": "GPU",
    "samples_format": "png",
    "jpeg_quality": 80,
    "webp_lossless": False,
    "enable_pnginfo": True,
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_version_to_infotext": True,
    "add_user_name_to_info": False,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "s_min_uncond": 0.0,
    "always_discard_next_to_last_sigma": False,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "use_old_scheduling": False,
    "s_min_uncond_all": False,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
    "use_old_karras_scheduler_sigmas": False,
    "skip_early_cond": 0.0,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "img2img_extra_noise": 0.0,
    "sgm_noise_multiplier": False,
    "sd_noise_schedule": "Default",
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "enable_prompt_comments": True,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "inpainting_mask_weight": 1.0,
    "img2img_background_color": "#ffffff",
    "overlay_inpaint": True,
    "return_grid": True,
    "grid_only_if_multiple": True,
    "return_mask": False,
    "return_mask_composite": False,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx cheap",
    "show_progress_grid": True,
    "live_previews_image_format": "png",
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
    "tiling": False,
    "samples_save": True,
    "grid_save": True,
    "use_old_hires_fix_width_height": False,
    "disable_weights_auto_swap": True,
    "infotext_styles": "Apply if any",
    "token_merging_ratio": 0.0,
    "api_enable_requests": False,
    "api_forbid_local_requests": True,
    "api_useragent": "",
    # Read and written like A1111's (clients round-trip them); see docs/compatibility.md for what each does here.
    "sd_vae_overrides_per_model_preferences": True,
    "live_preview_content": "Prompt",
    "grid_format": "png",
    "grid_background_color": "#ffffff",
    "n_rows": -1,
    "grid_prevent_empty_spots": False,
    "add_vae_name_to_info": True,
    "add_vae_hash_to_info": True,
    "auto_backcompat": True,
    "infotext_skip_pasting": [],
    "save_incomplete_images": False,
    "upscaling_max_images_in_cache": 5,
    "img2img_color_correction": False,
    # Extra networks (A1111 extensions-builtin/Lora: sd_lora appended to every prompt, Lora hashes infotext).
    "sd_lora": "None",
    "extra_networks_default_multiplier": 1.0,
    "lora_add_hashes_to_infotext": True,
    "textual_inversion_add_hashes_to_infotext": True,  # `TI hashes` (service/runtime/embeddings.py)
    "lora_bundled_ti_to_infotext": True,  # a LoRA's bundled embeddings in `TI hashes` (the LoRA's name)
    # Saving (save_images: service/a1111/saving.py, service/a1111/filenames.py).
    "samples_filename_pattern": "",
    "save_images_add_number": True,
    "save_images_replace_action": "Replace",
    "grid_extended_filename": False,
    "save_mask": False,
    "save_mask_composite": False,
    "export_for_4chan": True,
    "img_downscale_threshold": 4.0,
    "target_side_length": 4000,
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "save_to_dirs": True,
    "grid_save_to_dirs": True,
    "directories_filename_pattern": "[date]",
    "directories_max_prompt_words": 8,
    "save_txt": False,
    # SDXL conditioning and the refiner (engine/sdxl_conditioning.py, engine/refiner.py)
    "sdxl_clip_l_skip": False,
    "sdxl_crop_top": 0,
    "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "hires_fix_refiner_pass": "second pass",
    "refiner_switch_by_sample_steps": False,
    # sdedge's own: a running job's deadline in seconds; 0 = the --job-timeout flag's value (docs/api.md).
    "sdedge_job_timeout": 0.0,
}
IMPLEMENTED = frozenset(DEFAULTS)

# Every key a client may read and write: all of A1111's (service/a1111/a1111_options.py), sdedge's values winning.
# Keys outside IMPLEMENTED are stored and served back but change nothing; `unimplemented` names those in effect.
ALL_DEFAULTS: dict[str, Any] = {**A1111_DEFAULTS, **CLIENT_KEYS, **DEFAULTS}

# Values an option may take, where A1111 offers a fixed list (a value outside it would fail later, as a 500).
CHOICES: dict[str, tuple[str, ...]] = {
    "samples_format": ("png", "jpg", "jpeg", "webp"),
    "grid_format": ("png", "jpg", "jpeg", "webp"),
    "randn_source": ("GPU", "CPU", "NV"),
    "show_progress_type": ("Full", "Approx NN", "Approx cheap", "TAESD"),
    "live_previews_image_format": ("png", "jpeg", "webp"),
    "live_preview_content": ("Combined", "Prompt", "Negative prompt"),
    "infotext_styles": ("Apply if any", "Apply", "Discard", "Ignore"),
    "sd_noise_schedule": ("Default", "Zero Terminal SNR"),
    "save_images_replace_action": ("Replace", "Add number suffix"),
}

RANGES: dict[str, tuple[float, float]] = {
    "CLIP_stop_at_last_layers": (1, 12),
    "jpeg_quality": (1, 100),
    "show_progress_every_n_steps": (-1, 1000),
    "n_rows": (-1, 16),
    "inpainting_mask_weight": (0.0, 1.0),
    "directories_max_prompt_words": (1, 20),
    "target_side_length": (1, 65535),
    "code_former_weight": (0.0, 1.0),
    **OPTION_RANGES,  # the engine-feeding ones, bounded where the request fields are (service/a1111/sdapi_models.py)
}


class InvalidOption(ValueError):
    """A value of the wrong type or outside the option's range: the client's mistake (a 4xx)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def coerce_option(key: str, value: Any, default: Any) -> Any:
    """`value` in the option's type (taken from its default, as A1111 types its options model).

    Integral floats are accepted for int options because GET /options hands ints out as floats (A1111 quirk),
    and a client posting that dict back must succeed.
    """
    if default is None or isinstance(default, list | dict):
        return value
    if value is None:
        raise InvalidOption(key, "must not be null")
    if isinstance(default, bool):
        if isinstance(value, int | float) and not isinstance(value, bool) and value in (0, 1):
            value = bool(value)
        if not isinstance(value, bool):
            raise InvalidOption(key, f"expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidOption(key, f"expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidOption(key, f"expected a finite number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise InvalidOption(key, f"expected a string, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise InvalidOption(key, f"must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in RANGES and not RANGES[key][0] <= value <= RANGES[key][1]:
        low, high = RANGES[key]
        raise InvalidOption(key, f"must be between {low} and {high}, got {value!r}")
    return value


def api_view(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """GET /options as A1111 serves it: options with a non-zero int default come out as floats (A1111
    modules/api/api.py: Api.get_config)."""
    out = {}
    for key, value in values.items():
        default = defaults.get(key)
        typed_float = isinstance(default, int) and not isinstance(default, bool) and default != 0
        out[key] = float(value) if typed_float and isinstance(value, int) and not isinstance(value, bool) else value
    return out

# A1111 marks these `restrict_api`: readable, but writes through the API are silently ignored. The info-only
# HTML entries are never stored either.
RESTRICTED = {"api_enable_requests", "api_forbid_local_requests", "api_useragent"} | INFO_ONLY


def unimplemented(values: Mapping[str, Any]) -> list[str]:
    """Keys among `values` that sdedge does not implement and that are set away from A1111's default (so the
    result differs from what A1111 would give); at the default they change nothing and are not reported."""
    return [key for key, value in values.items()
            if key not in IMPLEMENTED and key in ALL_DEFAULTS and value != ALL_DEFAULTS[key]]


def unimplemented_warnings(values: Mapping[str, Any]) -> list[str]:
    """One sentence per option in effect that sdedge stores but does not implement (for `info` and the log)."""
    return [f"option {key}={values[key]!r} is not implemented by sdedge and has no effect"
            for key in unimplemented(values)]


class Options:
    """Current option values; thread-safe; written to `path` (if given) on every change, atomically."""

    def __init__(self, path: Path | None = None, defaults: Mapping[str, Any] = ALL_DEFAULTS):
        self.path = Path(path) if path else None
        self.defaults = dict(defaults)
        self._values: dict[str, Any] = dict(defaults)
        self._lock = threading.RLock()
        if self.path and self.path.is_file():
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            self._values.update({k: v for k, v in stored.items() if k in self.defaults})

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._values.get(key, default)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def update(self, changes: Mapping[str, Any], *, from_api: bool = True, persist: bool = True) -> None:
        """Set several options; an unknown key raises KeyError and a bad value InvalidOption, both before
        anything changes (A1111: 500 KeyError / stores anything)."""
        unknown = [k for k in changes if k not in self.defaults and k not in INFO_ONLY]
        if unknown:
            raise KeyError(unknown[0])
        typed = {k: coerce_option(k, v, self.defaults[k]) for k, v in changes.items()
                 if not (from_api and k in RESTRICTED) and k not in INFO_ONLY}
        for warning in unimplemented_warnings(typed):
            log.warning("%s (stored)", warning)
        with self._lock:
            self._values.update(typed)
            if persist:
                self._save()

    def api_snapshot(self) -> dict[str, Any]:
        return api_view(self.snapshot(), self.defaults)

    def _save(self) -> None:
        if not self.path:
            return
        write_atomic(self.path, json.dumps(self._values, indent=2, ensure_ascii=False))

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """The option values one job sees: current values with the request's `override_settings` applied."""
        values = self.snapshot()
        for key, value in (overrides or {}).items():
            if key in RESTRICTED:
                continue
            if key not in self.defaults:
                if value is None:
                    continue
                raise KeyError(key)
            values[key] = coerce_option(key, value, self.defaults[key])
        for warning in unimplemented_warnings({k: values[k] for k in (overrides or {}) if k in values}):
            log.warning("override_settings: %s", warning)
        return values

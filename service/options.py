"""Server options with A1111's names and defaults (a1111-api.md §9), persisted atomically to a JSON file."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    "enable_prompt_comments": True,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
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
}

# A1111 marks these `restrict_api`: readable, but writes through the API are silently ignored.
RESTRICTED = {"api_enable_requests", "api_forbid_local_requests", "api_useragent"}


class Options:
    """Current option values; thread-safe; written to `path` (if given) on every change, atomically."""

    def __init__(self, path: Path | None = None, defaults: Mapping[str, Any] = DEFAULTS):
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
        """Set several options; an unknown key raises KeyError before anything changes (A1111: 500 KeyError)."""
        unknown = [k for k in changes if k not in self.defaults]
        if unknown:
            raise KeyError(unknown[0])
        with self._lock:
            for key, value in changes.items():
                if from_api and key in RESTRICTED:
                    continue
                self._values[key] = value
            if persist:
                self._save()

    def _save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".options-", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._values, f, indent=2, ensure_ascii=False)
        os.replace(tmp, self.path)

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
            values[key] = value
        return values

"""A1111's refiner switch (modules/sd_samplers_common.py: apply_refiner, called at the start of every
CFGDenoiser.forward): once the completed fraction of sampling reaches `refiner_switch_at`, the sampler goes on
with the refiner checkpoint's UNet and conditioning recomputed by the refiner's text encoder (its own aesthetic
score time ids), from that very call. The images are then decoded by the refiner's VAE, the model loaded then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.schedules import ModelSchedule


@dataclass
class RefinerSwitch:
    """One sampling pass's refiner: `pipeline` is the refiner's engine Pipeline; `switched` once it took over."""

    switch_at: float | None
    pipeline: Any
    by_sample_steps: bool = False  # option refiner_switch_by_sample_steps
    switched: bool = False

    def completed_ratio(self, step: int, total_steps: int | None, sigma: float, schedule: ModelSchedule,
                        is_timestep: bool) -> float:
        """by steps: step / total_steps; else (999 − t)/1000 with t the model timestep nearest σ (for the
        timestep samplers `sigma` already is the timestep, as in A1111)."""
        if self.by_sample_steps:
            return step / total_steps
        t = int(sigma) if is_timestep else int(np.argmin(np.abs(schedule.sigmas - sigma)))
        return (999 - t) / 1000

    def due(self, step: int, total_steps: int | None, sigma: float, schedule: ModelSchedule,
            is_timestep: bool) -> bool:
        if self.switched:
            return False
        if self.switch_at is None:  # A1111: a refiner without a switch point takes over at the first call
            return True
        return self.completed_ratio(step, total_steps, sigma, schedule, is_timestep) >= self.switch_at

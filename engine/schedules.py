"""The model's noise schedule (alphas_cumprod → sigmas) and the sigma schedules samplers walk.

k-diffusion's `DiscreteSchedule` in NumPy (a1111-sampling.md §2.1–2.2, §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> np.ndarray:
    """LDM's "linear" schedule (diffusers' scaled_linear): betas in float64, stored as float32."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas).astype(np.float32)


@dataclass(frozen=True)
class ModelSchedule:
    """Discrete sigmas of a model and the continuous t ↔ σ maps k-diffusion uses."""

    alphas_cumprod: np.ndarray

    @cached_property
    def sigmas(self) -> np.ndarray:
        ac = self.alphas_cumprod
        return ((1 - ac) / ac) ** 0.5

    @cached_property
    def log_sigmas(self) -> np.ndarray:
        return np.log(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: float | np.ndarray) -> np.ndarray:
        log_sigma = np.log(np.asarray(sigma, dtype=np.float32))
        log_sigmas = self.log_sigmas
        dists = log_sigma[..., None] - log_sigmas
        low = np.clip(np.cumsum(dists >= 0, axis=-1).max(axis=-1) - 1, 0, len(log_sigmas) - 2)
        high = low + 1
        w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])
        w = np.clip(w, 0, 1)
        return (1 - w) * low + w * high

    def t_to_sigma(self, t: float | np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float32)
        low = np.floor(t).astype(np.int64)
        high = np.ceil(t).astype(np.int64)
        w = t - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return np.exp(log_sigma)


def append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.concatenate([sigmas, np.zeros(1, dtype=sigmas.dtype)])


def get_sigmas_uniform(schedule: ModelSchedule, n: int) -> np.ndarray:
    """The model's native schedule: t = linspace(999, 0, n) mapped through t_to_sigma (§2.2, §4.1)."""
    t = np.linspace(len(schedule.alphas_cumprod) - 1, 0, n, dtype=np.float32)
    return append_zero(schedule.t_to_sigma(t).astype(np.float32))


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler as A1111 lists it (a1111-api.md §12.2)."""

    name: str
    label: str
    function: object  # (schedule, n) -> sigmas; None for "automatic"
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in [
        SchedulerSpec("automatic", "Automatic", None),
        SchedulerSpec("uniform", "Uniform", get_sigmas_uniform, need_inner_model=True),
    ]
}


def get_sigmas(schedule: ModelSchedule, steps: int, scheduler: str, sampler_default: str | None = None) -> np.ndarray:
    """The sigma schedule a k-diffusion sampler walks: `scheduler` by name, "automatic" → the sampler's default."""
    name = scheduler if scheduler != "automatic" else (sampler_default or "uniform")
    return SCHEDULERS[name].function(schedule, steps)

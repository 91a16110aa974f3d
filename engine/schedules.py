"""The model's noise schedule (alphas_cumprod → sigmas) and the sigma schedules samplers walk.

k-diffusion's `DiscreteSchedule` in NumPy plus A1111's schedulers (A1111
modules/sd_models.py, modules/sd_schedulers.py, modules/sd_samplers_lcm.py; k_diffusion/external.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np


def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> np.ndarray:
    """LDM's "linear" schedule (diffusers' scaled_linear): betas in float64, stored as float32."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas).astype(np.float32)


ZERO_TERMINAL_SNR = "Zero Terminal SNR"
NOISE_SCHEDULES = ("Default", ZERO_TERMINAL_SNR)  # option sd_noise_schedule
# A1111 pins ᾱ_999 just above zero so that σ_max = √((1 − ᾱ)/ᾱ) stays finite (≈ 4519).
ZTSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2024 on ᾱ (A1111 modules/sd_models.py: `rescale_zero_terminal_snr_abar`, float32): shift √ᾱ
    so its last
    value is 0 and scale so its first is unchanged."""
    s = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float32))
    first, last = s[0], s[-1]
    s = (s - last) * (first / (first - last))
    ac = s**2
    ac[-1] = ZTSNR_LAST_ALPHA_CUMPROD
    return ac.astype(np.float32)


def append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.concatenate([sigmas, np.zeros(1, dtype=sigmas.dtype)])


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

    @property
    def lcm_boundary(self) -> bool:
        """Whether the denoiser applies LCM's boundary-condition scaling (only the LCM schedule does)."""
        return False

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

    def get_sigmas(self, n: int) -> np.ndarray:
        """The native schedule: t = linspace(t_max, 0, n) through t_to_sigma, then 0 (A1111
        k_diffusion/external.py: DiscreteSchedule)."""
        t = np.linspace(len(self.sigmas) - 1, 0, n, dtype=np.float32)
        return append_zero(self.t_to_sigma(t).astype(np.float32))


@dataclass(frozen=True)
class LCMSchedule(ModelSchedule):
    """A1111's LCM denoiser: only the 50 timesteps 20k+19 are valid, σ→t snaps to the nearest (A1111
    modules/sd_samplers_lcm.py: LCMCompVisDenoiser)."""

    original_steps: int = 50

    @property
    def skip(self) -> int:
        return len(self.alphas_cumprod) // self.original_steps

    @cached_property
    def sigmas(self) -> np.ndarray:
        ac = self.alphas_cumprod[self.skip - 1 :: self.skip][: self.original_steps]
        return ((1 - ac) / ac) ** 0.5

    @property
    def lcm_boundary(self) -> bool:
        return True

    def sigma_to_t(self, sigma: float | np.ndarray) -> np.ndarray:
        log_sigma = np.log(np.asarray(sigma, dtype=np.float32))
        nearest = np.abs(log_sigma[..., None] - self.log_sigmas).argmin(axis=-1)
        return nearest * self.skip + (self.skip - 1)

    def t_to_sigma(self, t: float | np.ndarray) -> np.ndarray:
        k = np.clip((np.asarray(t, dtype=np.float32) - (self.skip - 1)) / self.skip, 0, len(self.sigmas) - 1)
        return super().t_to_sigma(k)

    def get_sigmas(self, n: int) -> np.ndarray:
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        t = np.linspace(start, end, n, dtype=np.float32)
        return append_zero(self.t_to_sigma(t).astype(np.float32))


def lcm_schedule(schedule: ModelSchedule) -> LCMSchedule:
    return LCMSchedule(schedule.alphas_cumprod)


# ---- the schedulers (A1111 modules/sd_schedulers.py); all compute in float64, `get_sigmas` hands out float32 as A1111 does ----


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022): evenly spaced in σ^(1/ρ)."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Evenly spaced in log σ."""
    return append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> np.ndarray:
    """Polynomial in log σ; ρ = 1 is the exponential schedule."""
    ramp = np.linspace(1, 0, n) ** rho
    return append_zero(np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def get_sigmas_normal(
    model: ModelSchedule, n: int, sigma_min: float, sigma_max: float, sgm: bool = False
) -> np.ndarray:
    """Evenly spaced in t between t(σ_max) and t(σ_min); SGM drops the last of n+1 points instead (A1111
    modules/sd_schedulers.py: sgm_uniform, normal_scheduler)."""
    start, end = float(model.sigma_to_t(sigma_max)), float(model.sigma_to_t(sigma_min))
    t = np.linspace(start, end, n + 1, dtype=np.float32)[:-1] if sgm else np.linspace(start, end, n, dtype=np.float32)
    return append_zero(model.t_to_sigma(t).astype(np.float64))


def get_sigmas_kl_optimal(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """KL-optimal: evenly spaced in atan σ; n+1 values ending at σ_min, no zero appended (A1111 quirk)."""
    step = np.arange(n + 1) / n
    return np.tan(step * math.atan(sigma_min) + (1.0 - step) * math.atan(sigma_max))


AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def get_sigmas_align_your_steps(n: int, sdxl: bool = False) -> np.ndarray:
    """NVIDIA's Align Your Steps tables, log-linearly resampled to n values when n ≠ 11 (A1111
    modules/sd_schedulers.py: get_align_your_steps_sigmas)."""
    table = np.asarray(AYS_SDXL if sdxl else AYS_SD15, dtype=np.float64)
    if n != len(table):
        xs = np.linspace(0, 1, len(table))
        table = np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(table[::-1])))[::-1]
    return append_zero(table)


def get_sigmas_simple(model: ModelSchedule, n: int) -> np.ndarray:
    """Every (len/n)-th model sigma from the top (A1111 modules/sd_schedulers.py: simple_scheduler)."""
    step = len(model.sigmas) / n
    return append_zero(np.asarray([model.sigmas[-(1 + int(x * step))] for x in range(n)], dtype=np.float64))


def get_sigmas_ddim(model: ModelSchedule, n: int) -> np.ndarray:
    """The model sigmas at DDIM's timesteps 1, 1+s, 1+2s, …; may give more than n steps (A1111
    modules/sd_schedulers.py: ddim_scheduler)."""
    step = max(len(model.sigmas) // n, 1)
    return append_zero(np.asarray(model.sigmas[1::step][::-1], dtype=np.float64))


def get_sigmas_beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Beta-distribution quantiles, linear in σ as in A1111 v1.10.1 (A1111 modules/sd_schedulers.py:
    beta_scheduler)."""
    q = np.asarray([beta_ppf(p, alpha, beta) for p in 1 - np.linspace(0, 1, n)])
    return append_zero(sigma_min + q * (sigma_max - sigma_min))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - log_beta) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(1000):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-16:
            break
    return front * (f - 1.0)


def beta_ppf(p: float, a: float, b: float) -> float:
    """Quantile of the Beta(a, b) distribution: safeguarded Newton on I_x(a, b) = p."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    lo, hi, x = 0.0, 1.0, 0.5
    for _ in range(200):
        err = _betainc(a, b, x) - p
        if err > 0:
            hi = x
        else:
            lo = x
        pdf = math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_beta)
        step = x - err / pdf
        x_new = step if lo < step < hi else (lo + hi) / 2
        if abs(x_new - x) <= 1e-15 * max(x, 1e-300) or hi - lo < 1e-300:
            return x_new
        x = x_new
    return x


@dataclass(frozen=True)
class ScheduleOptions:
    """A1111's schedule settings (options `sigma_min`, `sigma_max`, `rho`: 0 = model/scheduler default)."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    sdxl: bool = False
    old_karras_sigmas: bool = False  # `use_old_karras_scheduler_sigmas`: range (0.1, 10)


SigmaFunction = Callable[[ModelSchedule, int, float, float, float, ScheduleOptions], np.ndarray]


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler as A1111 lists it (A1111 modules/sd_schedulers.py: schedulers).

    `function(model, n, sigma_min, sigma_max, rho, options)` returns n+1 sigmas (float64); None for "automatic".
    """

    name: str
    label: str
    function: SigmaFunction | None
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in [
        SchedulerSpec("automatic", "Automatic", None),
        SchedulerSpec("uniform", "Uniform", lambda m, n, lo, hi, rho, o: m.get_sigmas(n), need_inner_model=True),
        SchedulerSpec(
            "karras", "Karras", lambda m, n, lo, hi, rho, o: get_sigmas_karras(n, lo, hi, rho), default_rho=7.0
        ),
        SchedulerSpec("exponential", "Exponential", lambda m, n, lo, hi, rho, o: get_sigmas_exponential(n, lo, hi)),
        SchedulerSpec(
            "polyexponential",
            "Polyexponential",
            lambda m, n, lo, hi, rho, o: get_sigmas_polyexponential(n, lo, hi, rho),
            default_rho=1.0,
        ),
        SchedulerSpec(
            "sgm_uniform",
            "SGM Uniform",
            lambda m, n, lo, hi, rho, o: get_sigmas_normal(m, n, lo, hi, sgm=True),
            aliases=("SGMUniform",),
            need_inner_model=True,
        ),
        SchedulerSpec("kl_optimal", "KL Optimal", lambda m, n, lo, hi, rho, o: get_sigmas_kl_optimal(n, lo, hi)),
        SchedulerSpec(
            "align_your_steps", "Align Your Steps", lambda m, n, lo, hi, rho, o: get_sigmas_align_your_steps(n, o.sdxl)
        ),
        SchedulerSpec("simple", "Simple", lambda m, n, lo, hi, rho, o: get_sigmas_simple(m, n), need_inner_model=True),
        SchedulerSpec(
            "normal", "Normal", lambda m, n, lo, hi, rho, o: get_sigmas_normal(m, n, lo, hi), need_inner_model=True
        ),
        SchedulerSpec("ddim", "DDIM", lambda m, n, lo, hi, rho, o: get_sigmas_ddim(m, n), need_inner_model=True),
        SchedulerSpec(
            "beta",
            "Beta",
            lambda m, n, lo, hi, rho, o: get_sigmas_beta(n, lo, hi, o.beta_alpha, o.beta_beta),
            need_inner_model=True,
        ),
    ]
}


def find_scheduler(name_or_label: str | None) -> SchedulerSpec | None:
    """A scheduler by name or label (the two spellings A1111's `schedulers_map` accepts)."""
    if name_or_label is None:
        return None
    return SCHEDULERS.get(name_or_label) or next(
        (s for s in SCHEDULERS.values() if s.label == name_or_label), None
    )


def get_sigmas(
    schedule: ModelSchedule,
    steps: int,
    scheduler: str,
    sampler_default: str | None = None,
    *,
    discard_next_to_last_sigma: bool = False,
    options: ScheduleOptions = ScheduleOptions(),
) -> np.ndarray:
    """The float32 schedule a k-diffusion sampler walks (A1111 modules/sd_samplers_kdiffusion.py:
    KDiffusionSampler.get_sigmas).

    `scheduler` by name or label; "automatic" → the sampler's default, and without one the model's native
    schedule. Discarding computes one step more and drops the penultimate sigma.
    """
    n = steps + 1 if discard_next_to_last_sigma else steps
    spec = find_scheduler(scheduler)
    if spec is None or spec.function is None:
        spec = find_scheduler(sampler_default)
    if spec is None or spec.function is None:
        sigmas = schedule.get_sigmas(n)
    else:
        model_min, model_max = schedule.sigma_min, schedule.sigma_max
        sigma_min, sigma_max = (0.1, 10.0) if options.old_karras_sigmas else (model_min, model_max)
        if options.sigma_min and options.sigma_min != model_min:
            sigma_min = options.sigma_min
        if options.sigma_max and options.sigma_max != model_max:
            sigma_max = options.sigma_max
        rho = spec.default_rho
        if spec.default_rho != -1 and options.rho and options.rho != spec.default_rho:
            rho = options.rho
        sigmas = spec.function(schedule, n, sigma_min, sigma_max, rho, options)
    sigmas = np.asarray(sigmas, dtype=np.float32)
    if discard_next_to_last_sigma:
        sigmas = np.concatenate([sigmas[:-2], sigmas[-1:]])
    return sigmas


def get_sigmas_uniform(schedule: ModelSchedule, n: int) -> np.ndarray:
    """The model's native schedule (kept for callers of the first engine version)."""
    return schedule.get_sigmas(n)

"""Samplers over NumPy latents, written like k-diffusion's `sampling.py` (A1111 k_diffusion/sampling.py).

Every sampler has the shape `sample_x(model, x, sigmas, callback=None, noise_sampler=None, **options)`:
`model(x, sigma)` returns the CFG-combined denoised prediction D(x, σ); `noise_sampler(sigma, sigma_next)`
returns the next noise draw (A1111 routes every draw through the image generators, so determinism is a
property of what is passed in); `callback(dict)` is the single place progress, previews and interrupts hook in.
Scalars are Python floats, so a float64 `x` stays float64 and a float32 `x` stays float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from engine import timestep_samplers
from engine.schedules import ScheduleOptions, get_sigmas_karras

Denoiser = Callable[[np.ndarray, float], np.ndarray]
NoiseSampler = Callable[[float, float], np.ndarray]
StepCallback = Callable[[dict], None]


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """Converts a denoiser output to a Karras ODE derivative."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Splits a step from sigma_from to sigma_to into (sigma_down, sigma_up) for an ancestral sampler."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _t(sigma: float) -> float:
    """Half-log-SNR time t = −ln σ (σ = 0 is t = ∞)."""
    return -math.log(sigma) if sigma > 0 else math.inf


def _sigma(t: float) -> float:
    return math.exp(-t)


def _noise(noise_sampler: NoiseSampler | None, sigma: float, sigma_next: float) -> np.ndarray:
    if noise_sampler is None:
        raise ValueError("this sampler adds noise: pass a noise_sampler")
    return noise_sampler(sigma, sigma_next)


def _churn(
    noise_sampler: NoiseSampler | None, x: np.ndarray, sigma: float, sigma_next: float, n: int,
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
) -> tuple[np.ndarray, float]:
    """Karras' stochastic churn: raise σ to σ̂ = σ(1+γ) by adding noise. A1111 draws ε every step."""
    gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    eps = noise_sampler(sigma, sigma_next) * s_noise if noise_sampler is not None else None
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        if eps is None:
            raise ValueError("s_churn > 0 adds noise: pass a noise_sampler")
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def _report(callback: StepCallback | None, x, i, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def sample_euler(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> np.ndarray:
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022)."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma_hat = _churn(noise_sampler, x, sigma, sigma_next, n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigma, sigma_hat, denoised)
        x = x + d * (sigma_next - sigma_hat)
    return x


def sample_euler_ancestral(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
) -> np.ndarray:
    """Ancestral sampling with Euler method steps."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        _report(callback, x, i, sigma, sigma, denoised)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + _noise(noise_sampler, sigma, sigma_next) * s_noise * sigma_up
    return x


def sample_heun(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> np.ndarray:
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022); Euler for the last step to σ = 0."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma_hat = _churn(noise_sampler, x, sigma, sigma_next, n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigma, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_dpm_2(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> np.ndarray:
    """A sampler inspired by DPM-Solver-2 and Algorithm 2 from Karras et al. (2022): midpoint in log σ."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma_hat = _churn(noise_sampler, x, sigma, sigma_next, n, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigma, sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            sigma_mid = math.exp(math.log(sigma_hat) + 0.5 * (math.log(sigma_next) - math.log(sigma_hat)))
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_next - sigma_hat)
    return x


def sample_dpm_2_ancestral(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
) -> np.ndarray:
    """Ancestral sampling with DPM-Solver second-order steps."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        _report(callback, x, i, sigma, sigma, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = math.exp(math.log(sigma) + 0.5 * (math.log(sigma_down) - math.log(sigma)))
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigma)
            x = x + _noise(noise_sampler, sigma, sigma_next) * s_noise * sigma_up
    return x


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """∫ from t_i to t_{i+1} of the Lagrange basis polynomial of node t_{i−j} over t_i … t_{i−order+1}.

    The integrand has degree ≤ 3, so 4-point Gauss–Legendre is exact (A1111 uses scipy's quad).
    """
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    a, b = float(t[i]), float(t[i + 1])
    tau = (b - a) / 2 * _GAUSS_NODES + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * np.dot(_GAUSS_WEIGHTS, basis))


def sample_lms(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, order: int = 4,
) -> np.ndarray:
    """Linear multistep over the last `order` derivatives, integrated in σ."""
    sigmas64 = np.asarray(sigmas, dtype=np.float64)
    ds: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        sigma = float(sigmas[i])
        denoised = model(x, sigma)
        ds.append(to_d(x, sigma, denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sigma, sigma, denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas64, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=True))
    return x


def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
) -> np.ndarray:
    """Ancestral sampling with DPM-Solver++(2S) second-order steps."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = _t(sigma), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - math.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, _sigma(s))
            x = (_sigma(t_next) / _sigma(t)) * x - math.expm1(-h) * denoised_2
        if sigma_next > 0:
            x = x + _noise(noise_sampler, sigma, sigma_next) * s_noise * sigma_up
    return x


def sample_dpmpp_sde(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0, r: float = 1 / 2,
) -> np.ndarray:
    """DPM-Solver++ (stochastic): two stages per step, each with its own noise draw."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
            continue
        t, t_next = _t(sigma), _t(sigma_next)
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # Step 1
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - math.expm1(t - s_) * denoised
        x_2 = x_2 + _noise(noise_sampler, _sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s))
        # Step 2
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - math.expm1(t - t_next_) * denoised_d
        x = x + _noise(noise_sampler, _sigma(t), _sigma(t_next)) * s_noise * su
    return x


def sample_dpmpp_2m(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M): second order from the previous denoised; first order on the first and last step."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised  # (σ_next/σ)·x − expm1(−∞)·D
        else:
            t, t_next = _t(sigma), _t(sigma_next)
            h = t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (t - _t(float(sigmas[i - 1]))) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> np.ndarray:
    """DPM-Solver++(2M) SDE, with the midpoint or Heun correction of the second-order term."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    old_denoised = None
    h_last = h = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t(sigma_next) - _t(sigma)
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)
            x = sigma_next / sigma * math.exp(-eta_h) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                noise_scale = sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                x = x + _noise(noise_sampler, sigma, sigma_next) * noise_scale
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
) -> np.ndarray:
    """DPM-Solver++(3M) SDE: third order from the two previous denoised predictions."""
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        _report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t(sigma_next) - _t(sigma)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                noise_scale = sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + _noise(noise_sampler, sigma, sigma_next) * noise_scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ---- DPM-Solver (Lu et al. 2022) in t = −ln σ: the building blocks of DPM fast / adaptive (A1111 k_diffusion/sampling.py: DPMSolver) ----


class _Eps:
    """ε(x, t) = (x − D(x, σ(t))) / σ(t), cached per key within one solver step (k-diffusion's eps_cache)."""

    def __init__(self, model: Denoiser):
        self.model = model
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, key: str, x: np.ndarray, t: float) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = (x - self.model(x, _sigma(t))) / _sigma(t)
        return self.cache[key]


def dpm_solver_1_step(eps: _Eps, x: np.ndarray, t: float, t_next: float) -> np.ndarray:
    h = t_next - t
    return x - _sigma(t_next) * math.expm1(h) * eps("eps", x, t)


def dpm_solver_2_step(eps: _Eps, x: np.ndarray, t: float, t_next: float, r1: float = 1 / 2) -> np.ndarray:
    h = t_next - t
    e = eps("eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * math.expm1(r1 * h) * e
    e_r1 = eps("eps_r1", u1, s1)
    return x - _sigma(t_next) * math.expm1(h) * e - _sigma(t_next) / (2 * r1) * math.expm1(h) * (e_r1 - e)


def dpm_solver_3_step(
    eps: _Eps, x: np.ndarray, t: float, t_next: float, r1: float = 1 / 3, r2: float = 2 / 3
) -> np.ndarray:
    h = t_next - t
    e = eps("eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * math.expm1(r1 * h) * e
    e_r1 = eps("eps_r1", u1, s1)
    u2 = (
        x - _sigma(s2) * math.expm1(r2 * h) * e
        - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e_r1 - e)
    )
    e_r2 = eps("eps_r2", u2, s2)
    return x - _sigma(t_next) * math.expm1(h) * e - _sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (e_r2 - e)


def _ancestral_t(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """Where a DPM-Solver step lands before noise is added back, and the noise scale."""
    if not eta:
        return t_next, 0.0
    sd, _ = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_next_ = min(t_end, _t(sd))
    return t_next_, max(_sigma(t_next) ** 2 - _sigma(t_next_) ** 2, 0.0) ** 0.5


def sample_dpm_fast(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, sigma_min: float | None = None, sigma_max: float | None = None,
    n: int | None = None, eta: float = 0.0, s_noise: float = 1.0,
) -> np.ndarray:
    """DPM-Solver-fast: fixed NFE n in orders 3,…,3 then 2,1 (or n mod 3), evenly spaced in t.

    Only the σ range is used: txt2img passes the model's extremes and n = steps; without them the range and n
    come from `sigmas` (σ_0 … σ_{−2}), which is what img2img does.
    """
    sigma_max = float(sigmas[0]) if sigma_max is None else sigma_max
    sigma_min = float(sigmas[-2]) if sigma_min is None else sigma_min
    n = len(sigmas) - 1 if n is None else n
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    m = n // 3 + 1
    ts = np.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    step = {1: dpm_solver_1_step, 2: dpm_solver_2_step, 3: dpm_solver_3_step}
    for i, order in enumerate(orders):
        t, t_next = float(ts[i]), float(ts[i + 1])
        t_next_, su = _ancestral_t(t, t_next, t_end, eta)
        eps = _Eps(model)
        e = eps("eps", x, t)
        _report(callback, x, i, _sigma(t), _sigma(t), x - _sigma(t) * e)
        x = step[order](eps, x, t, t_next_)
        # Drawn even when su = 0 (η = 0): A1111's streams advance regardless.
        x = x + su * s_noise * _noise(noise_sampler, _sigma(t), _sigma(t_next))
    return x


@dataclass
class PIDStepSizeController:
    """k-diffusion's PID controller on the inverse error (Söderlind), with an atan limiter."""

    h: float
    pcoeff: float
    icoeff: float
    dcoeff: float
    order: float = 1.0
    accept_safety: float = 0.81
    eps: float = 1e-8
    errs: list[float] = field(default_factory=list)

    def propose_step(self, error: float) -> bool:
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = 1 + math.atan(self.errs[0] ** b1 * self.errs[1] ** b2 * self.errs[2] ** b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, sigma_min: float | None = None, sigma_max: float | None = None,
    order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
    icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
    s_noise: float = 1.0,
) -> np.ndarray:
    """DPM-Solver-12 / -23 with adaptive step size: embedded low/high order pair, PID-controlled h."""
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    sigma_max = float(sigmas[0]) if sigma_max is None else sigma_max
    sigma_min = float(sigmas[-2]) if sigma_min is None else sigma_min
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    s = t_start
    x_prev = x
    pid = PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    steps = 0
    while s < t_end - 1e-5:
        t = min(t_end, s + pid.h)
        t_, su = _ancestral_t(s, t, t_end, eta)
        eps = _Eps(model)
        denoised = x - _sigma(s) * eps("eps", x, s)
        if order == 2:
            x_low = dpm_solver_1_step(eps, x, s, t_)
            x_high = dpm_solver_2_step(eps, x, s, t_)
        else:
            x_low = dpm_solver_2_step(eps, x, s, t_, r1=1 / 3)
            x_high = dpm_solver_3_step(eps, x, s, t_)
        delta = np.maximum(atol, rtol * np.maximum(np.abs(x_low), np.abs(x_prev)))
        error = float(np.linalg.norm(((x_low - x_high) / delta).ravel()) / x.size**0.5)
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * _noise(noise_sampler, _sigma(s), _sigma(t))
            s = t
        _report(callback, x, steps, _sigma(s), _sigma(s), denoised)
        steps += 1
    return x


def sample_restart(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, restart_list: dict[float, tuple[int, int, float]] | None = None,
) -> np.ndarray:
    """Restart sampling (Xu et al. 2023) as A1111 implements it: Heun steps plus restart segments (A1111
    modules/sd_samplers_extra.py: restart_sampler).

    `restart_list` maps a σ to (restart steps, restart times, max σ). By default, from 20 steps on, the given
    schedule is *replaced* by Karras(steps − K·R) and one restart segment is placed at σ ≈ 0.1.
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = get_sigmas_karras(
                steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0])
            ).astype(sigmas.dtype)
            restart_list = {0.1: (restart_steps + 1, restart_times, 2.0)}
        else:
            restart_list = {}
    restart_at = {int(np.argmin(np.abs(sigmas - key))): value for key, value in restart_list.items()}

    step_list: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        step_list.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in restart_at:
            restart_steps, restart_times, restart_max = restart_at[i + 1]
            min_idx = i + 1
            max_idx = int(np.argmin(np.abs(sigmas - restart_max)))
            if max_idx < min_idx:
                restart = get_sigmas_karras(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1]
                restart = restart.astype(sigmas.dtype)
                pairs = [(float(a), float(b)) for a, b in zip(restart[:-1], restart[1:], strict=True)]
                step_list.extend(pairs * restart_times)

    last_sigma = None
    for step_id, (old_sigma, new_sigma) in enumerate(step_list):
        if last_sigma is not None and last_sigma < old_sigma:
            x = x + _noise(noise_sampler, old_sigma, new_sigma) * (old_sigma**2 - last_sigma**2) ** 0.5
        # One Heun step (Euler to σ = 0).
        denoised = model(x, old_sigma)
        d = to_d(x, old_sigma, denoised)
        _report(callback, x, step_id, new_sigma, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, new_sigma, model(x_2, new_sigma))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


def sample_lcm(
    model: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> np.ndarray:
    """Latent Consistency Model sampling: jump to the prediction, re-noise to the next σ (A1111
    modules/sd_samplers_lcm.py: LCMCompVisDenoiser)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        _report(callback, x, i, sigma, sigma, denoised)
        x = denoised
        if sigma_next > 0:
            x = x + sigma_next * _noise(noise_sampler, sigma, sigma_next)
    return x


# ---- the registry: A1111's sampler table (A1111 modules/sd_samplers_kdiffusion.py, modules/sd_samplers_timesteps.py) ----

KDIFFUSION = "k-diffusion"
TIMESTEPS = "timesteps"


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler as A1111 lists it: display name, aliases, the function and its options (A1111
    modules/sd_samplers_kdiffusion.py: samplers_k_diffusion).

    `options` is A1111's options dict as `/samplers` shows it. `extra_params` are the churn/noise settings A1111
    passes to this function (its `sampler_extra_params`); `eta` goes to every function that takes it.
    `kind` is "k-diffusion" (walks sigmas, D(x, σ)) or "timesteps" (walks DDIM's grid, ε(x, t)).
    """

    name: str
    aliases: tuple[str, ...]
    function: Callable[..., np.ndarray]
    options: dict[str, object] = field(default_factory=dict)
    extra_params: tuple[str, ...] = ()
    kind: str = KDIFFUSION

    @property
    def default_scheduler(self) -> str | None:
        return self.options.get("scheduler")  # type: ignore[return-value]

    @property
    def second_order(self) -> bool:
        return bool(self.options.get("second_order", False))

    @property
    def discard_next_to_last_sigma(self) -> bool:
        return bool(self.options.get("discard_next_to_last_sigma", False))

    @property
    def brownian_noise(self) -> bool:
        return bool(self.options.get("brownian_noise", False))

    @property
    def uses_ensd(self) -> bool:
        return bool(self.options.get("uses_ensd", False))

    def total_steps(self, steps: int) -> int:
        """Steps prompt-edit schedules are computed over: doubled for second-order samplers (A1111 quirk)."""
        return steps * 2 if self.second_order else steps


@dataclass(frozen=True)
class SamplerSettings:
    """A1111's sampler settings (options, not request fields), resolved once per job (A1111
    modules/shared_options.py)."""

    eta_ancestral: float = 1.0  # eta of k-diffusion samplers when the request has none
    eta_ddim: float = 0.0  # eta of the timestep samplers when the request has none
    s_min_uncond: float = 0.0  # NGMS: the request's value, else the option
    s_min_uncond_all: bool = False
    always_discard_next_to_last_sigma: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    schedule: ScheduleOptions = ScheduleOptions()
    skip_early_cond: float = 0.0  # cfg 1 (no uncond) while denoiser step / total steps ≤ this (A1111 modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward)
    img2img_extra_noise: float = 0.0  # img2img and hires start: x += noise·e (A1111 KDiffusionSampler.sample_img2img)
    sgm_noise_multiplier: bool = False  # txt2img, k-diffusion: start at noise·√(1 + σ₀²), not noise·σ₀ (A1111 modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample)
    # Cond and uncond of different token lengths: "" runs them as two UNet calls (A1111's default); "empty" pads the
    # shorter with the encoded empty prompt (option pad_cond_uncond), "v0" repeats or truncates the uncond's last
    # vector (pad_cond_uncond_v0, which wins), so one batched call serves both.
    pad_cond_uncond: str = ""
    noise_schedule: str = "Default"  # sd_noise_schedule; "Zero Terminal SNR" rescales ᾱ (A1111 modules/sd_models.py: rescale_zero_terminal_snr_abar)


_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_NOISE = ("s_noise",)

SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in [
        SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), sample_dpmpp_2m, {"scheduler": "karras"}),
        SamplerSpec(
            "DPM++ SDE", ("k_dpmpp_sde",), sample_dpmpp_sde,
            {"scheduler": "karras", "second_order": True, "brownian_noise": True}, _NOISE,
        ),
        SamplerSpec(
            "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), sample_dpmpp_2m_sde,
            {"scheduler": "exponential", "brownian_noise": True}, _NOISE,
        ),
        SamplerSpec(
            "DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), partial(sample_dpmpp_2m_sde, solver_type="heun"),
            {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}, _NOISE,
        ),
        SamplerSpec(
            "DPM++ 2S a", ("k_dpmpp_2s_a",), sample_dpmpp_2s_ancestral,
            {"scheduler": "karras", "uses_ensd": True, "second_order": True}, _NOISE,
        ),
        SamplerSpec(
            "DPM++ 3M SDE", ("k_dpmpp_3m_sde",), sample_dpmpp_3m_sde,
            {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}, _NOISE,
        ),
        SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), sample_euler_ancestral, {"uses_ensd": True}),
        SamplerSpec("Euler", ("k_euler",), sample_euler, {}, _CHURN),
        SamplerSpec("LMS", ("k_lms",), sample_lms, {}),
        SamplerSpec("Heun", ("k_heun",), sample_heun, {"second_order": True}, _CHURN),
        SamplerSpec(
            "DPM2", ("k_dpm_2",), sample_dpm_2,
            {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}, _CHURN,
        ),
        SamplerSpec(
            "DPM2 a", ("k_dpm_2_a",), sample_dpm_2_ancestral,
            {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
            _NOISE,
        ),
        SamplerSpec("DPM fast", ("k_dpm_fast",), sample_dpm_fast, {"uses_ensd": True}, _NOISE),
        SamplerSpec("DPM adaptive", ("k_dpm_ad",), sample_dpm_adaptive, {"uses_ensd": True}),
        SamplerSpec("Restart", ("restart",), sample_restart, {"scheduler": "karras", "second_order": True}),
        SamplerSpec("DDIM", ("ddim",), timestep_samplers.ddim, {}, kind=TIMESTEPS),
        SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), timestep_samplers.ddim_cfgpp, {}, kind=TIMESTEPS),
        SamplerSpec("PLMS", ("plms",), timestep_samplers.plms, {}, kind=TIMESTEPS),
        SamplerSpec("UniPC", ("unipc",), timestep_samplers.unipc, {}, kind=TIMESTEPS),
        SamplerSpec("LCM", ("k_lcm",), sample_lcm, {}),
    ]
}

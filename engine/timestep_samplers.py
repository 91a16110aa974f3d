"""A1111's "timesteps" samplers: DDIM, DDIM CFG++, PLMS and UniPC over ε(x, t) (A1111
modules/sd_samplers_timesteps_impl.py, modules/models/diffusion/uni_pc/uni_pc.py).

They walk DDIM's integer timestep grid in variance-preserving scale (x unscaled, no c_in). The model is an
`EpsModel`: `model.eps(x, t)` returns the CFG-combined noise prediction at (possibly fractional) timestep t.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from engine.schedules import ModelSchedule, append_zero

StepCallback = Callable[[dict], None]
NoiseSampler = Callable[[float, float], np.ndarray]


class EpsModel(Protocol):
    alphas_cumprod: np.ndarray

    def eps(self, x: np.ndarray, t: float) -> np.ndarray: ...


class GuidedEpsModel(EpsModel, Protocol):
    def eps_and_uncond(self, x: np.ndarray, t: float, cfg_scale_multiplier: float) -> tuple[np.ndarray, np.ndarray]:
        """(CFG-combined ε with the scale multiplied by `cfg_scale_multiplier`, the unconditional ε)."""
        ...


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """A1111's grid `range(0, 1000, 1000 // steps) + 1`: 20 steps → [1, 51, …, 951]; 30 → 31 entries (A1111
    modules/sd_samplers_timesteps_impl.py: ddim).

    Beyond 1000 steps A1111 fails (range step 0); here the grid then is every timestep.
    """
    stride = max(num_train_timesteps // steps, 1)
    return np.clip(np.arange(0, num_train_timesteps, stride) + 1, 0, num_train_timesteps - 1)


def grid_sigmas(schedule: ModelSchedule, steps: int, grid_steps: int | None = None) -> np.ndarray:
    """DDIM's grid for `grid_steps` (default `steps`) as the σ it walks, top down, then 0 — the last steps + 1
    entries, so that img2img's tail `σ[steps − t_enc − 1:]` is the grid's lowest t_enc + 1 points (A1111
    modules/sd_samplers_common.py: setup_img2img_steps).

    The grid can be longer than `steps` (30 → 31); txt2img restores its top from the spacing (`timestep_pass`).
    """
    timesteps = ddim_timesteps(grid_steps or steps, len(schedule.alphas_cumprod))
    return append_zero(schedule.sigmas[timesteps][::-1].astype(np.float32))[-(steps + 1) :]


@dataclass(frozen=True)
class TimestepPass:
    """What a timestep sampler walks: the ascending grid, and (img2img) the timestep noise was added at."""

    timesteps: np.ndarray
    noise_timestep: int | None = None


def timestep_pass(schedule: ModelSchedule, sigmas: np.ndarray, img2img: bool) -> TimestepPass:
    """Read a `grid_sigmas` schedule back: txt2img walks the whole grid of that spacing from pure noise;
    img2img walks T[:t_enc] after noising to T[t_enc], one level above its first model call (A1111 quirk)."""
    n = len(schedule.alphas_cumprod)
    low = np.rint(schedule.sigma_to_t(np.asarray(sigmas[:-1], dtype=np.float32))[::-1]).astype(np.int64)
    if img2img:
        if len(low) == 0:
            return TimestepPass(low)
        return TimestepPass(low[:-1], int(low[-1]))
    stride = int(low[1] - low[0]) if len(low) > 1 else n
    return TimestepPass(np.clip(np.arange(0, n, stride) + 1, 0, n - 1))


def _report(callback: StepCallback | None, x: np.ndarray, i: int, denoised: np.ndarray) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": denoised})


def _alphas(model: EpsModel, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ᾱ at each grid point and at the previous one (ᾱ_0 before the first), as A1111 indexes them."""
    ac = model.alphas_cumprod
    alphas = ac[timesteps]
    alphas_prev = ac[np.concatenate([[0], timesteps[:-1]])].astype(np.float64)
    return alphas, alphas_prev


def _ddim_sigmas(alphas: np.ndarray, alphas_prev: np.ndarray, eta: float) -> np.ndarray:
    # A1111 divides a NumPy array by a float32 tensor, which torch evaluates as reciprocal(tensor) · array:
    # 1/(1 − ᾱ_t) is rounded to ᾱ's own dtype (float32) before the rest runs in float64.
    inv_one_minus = (1 / (1 - alphas)).astype(np.float64)
    return eta * np.sqrt((1 - alphas_prev) * inv_one_minus * (1 - alphas.astype(np.float64) / alphas_prev))


def _scalar(value: float, like: np.ndarray) -> np.ndarray:
    """A per-step coefficient in x's dtype (A1111 multiplies Python floats into ones of x's dtype)."""
    return np.asarray(value, dtype=like.dtype)


def ddim(
    model: EpsModel, x: np.ndarray, timesteps: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
) -> np.ndarray:
    """DDIM (Song et al. 2020) over A1111's grid: len(T) − 1 model calls, ending at ᾱ[T_0], not at x_0."""
    return _ddim_loop(model, x, timesteps, callback, noise_sampler, eta, cfgpp=False)


def ddim_cfgpp(
    model: GuidedEpsModel, x: np.ndarray, timesteps: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
) -> np.ndarray:
    """CFG++ (Chung et al. 2024): guidance scale / 12.5, and the direction term uses the unconditional ε."""
    return _ddim_loop(model, x, timesteps, callback, noise_sampler, eta, cfgpp=True)


def _ddim_loop(model, x, timesteps, callback, noise_sampler, eta, cfgpp: bool) -> np.ndarray:
    timesteps = np.asarray(timesteps)
    alphas, alphas_prev = _alphas(model, timesteps)
    sqrt_one_minus_alphas = np.sqrt(1 - alphas)
    sigmas = _ddim_sigmas(alphas, alphas_prev, eta)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        t = float(timesteps[index])
        if cfgpp:
            e_t, e_dir = model.eps_and_uncond(x, t, 1 / 12.5)
        else:
            e_t = e_dir = model.eps(x, t)
        a_t = _scalar(float(alphas[index]), x)
        a_prev = _scalar(float(alphas_prev[index]), x)
        sigma_t = _scalar(float(sigmas[index]), x)
        pred_x0 = (x - _scalar(float(sqrt_one_minus_alphas[index]), x) * e_t) / np.sqrt(a_t)
        dir_xt = np.sqrt(1.0 - a_prev - sigma_t**2) * e_dir
        x = np.sqrt(a_prev) * pred_x0 + dir_xt
        if noise_sampler is not None:
            # Drawn every step, also when η = 0 (A1111's streams advance regardless).
            x = x + sigma_t * noise_sampler(t, float(timesteps[index - 1]))
        elif sigma_t != 0:
            raise ValueError("eta > 0 adds noise: pass a noise_sampler")
        _report(callback, x, i, pred_x0)
    return x


def plms(
    model: EpsModel, x: np.ndarray, timesteps: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> np.ndarray:
    """Pseudo linear multistep (Liu et al. 2022): Adams–Bashforth on ε, a pseudo improved Euler first step."""
    timesteps = np.asarray(timesteps)
    alphas, alphas_prev = _alphas(model, timesteps)
    sqrt_one_minus_alphas = np.sqrt(1 - alphas)
    old_eps: list[np.ndarray] = []

    def step(x: np.ndarray, e_t: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        a_t = _scalar(float(alphas[index]), x)
        a_prev = _scalar(float(alphas_prev[index]), x)
        pred_x0 = (x - _scalar(float(sqrt_one_minus_alphas[index]), x) * e_t) / np.sqrt(a_t)
        return np.sqrt(a_prev) * pred_x0 + np.sqrt(1.0 - a_prev) * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model.eps(x, float(timesteps[index]))
        if len(old_eps) == 0:
            x_prev, _ = step(x, e_t, index)
            e_t_next = model.eps(x_prev, float(timesteps[max(index - 1, 0)]))
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = step(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        _report(callback, x, i, pred_x0)
    return x


# ---- UniPC (Zhao et al. 2023), multistep, data prediction, as A1111's uni_pc module runs it (A1111 modules/models/diffusion/uni_pc/uni_pc.py) ----


@dataclass(frozen=True)
class VPSchedule:
    """The discrete VP schedule in continuous time t ∈ (0, 1]: t_k = (k+1)/N, log α piecewise linear in t."""

    alphas_cumprod: np.ndarray

    @property
    def total_n(self) -> int:
        return len(self.alphas_cumprod)

    @cached_property
    def t_array(self) -> np.ndarray:
        return np.arange(1, self.total_n + 1, dtype=np.float64) / self.total_n

    @cached_property
    def log_alpha_array(self) -> np.ndarray:
        # A1111 takes the log of the float32 ᾱ in float32; near t = 0, λ(t) amplifies an ulp of it to ~1e-9 in
        # the result, so round a float64 log once (what torch's float32 log gave for the spec's vectors).
        log_alpha = 0.5 * np.log(np.asarray(self.alphas_cumprod, dtype=np.float64))
        return log_alpha.astype(np.float32).astype(np.float64)

    def log_alpha(self, t: float) -> float:
        return _interp_extrapolate(t, self.t_array, self.log_alpha_array)

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(1.0 - math.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: float) -> float:
        """Half-log-SNR λ(t) = log α − log σ."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * math.log(1.0 - math.exp(2.0 * log_alpha))

    def inverse_lambda(self, lamb: float) -> float:
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lamb)
        return _interp_extrapolate(float(log_alpha), self.log_alpha_array[::-1], self.t_array[::-1])


def _interp_extrapolate(x: float, xp: np.ndarray, fp: np.ndarray) -> float:
    """Piecewise-linear interpolation that extends the end segments linearly (UniPC's interpolate_fn)."""
    k = int(np.clip(np.searchsorted(xp, x), 1, len(xp) - 1))
    x0, x1, y0, y1 = float(xp[k - 1]), float(xp[k]), float(fp[k - 1]), float(fp[k])
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def unipc_time_steps(ns: VPSchedule, skip_type: str, t_T: float, t_0: float, n: int) -> np.ndarray:
    if skip_type == "logSNR":
        lambdas = np.linspace(ns.lambda_(t_T), ns.lambda_(t_0), n + 1)
        return np.asarray([ns.inverse_lambda(float(lamb)) for lamb in lambdas])
    if skip_type == "time_uniform":
        return np.linspace(t_T, t_0, n + 1)
    if skip_type == "time_quadratic":
        return np.linspace(t_T**0.5, t_0**0.5, n + 1) ** 2
    raise ValueError(f"unknown UniPC skip type {skip_type!r}")


def _unipc_update(
    data_model: Callable[[np.ndarray, float], np.ndarray], ns: VPSchedule, x: np.ndarray,
    model_prev: list[np.ndarray], t_prev: list[float], t: float, order: int, use_corrector: bool, variant: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One UniPC step to t from the history (most recent last): predictor UniP, then corrector UniC."""
    lambda_prev_0, lambda_t = ns.lambda_(t_prev[-1]), ns.lambda_(t)
    model_prev_0 = model_prev[-1]
    sigma_prev_0, sigma_t, alpha_t = ns.sigma(t_prev[-1]), ns.sigma(t), ns.alpha(t)
    h = lambda_t - lambda_prev_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (ns.lambda_(t_prev[-(i + 1)]) - lambda_prev_0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
    rks.append(1.0)
    rks_a = np.asarray(rks, dtype=np.float64)
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    x_t_ = (sigma_t / sigma_prev_0) * x - (alpha_t * h_phi_1) * model_prev_0
    if variant == "vary_coeff":
        return _unipc_vary_coeff(data_model, x_t_, model_prev_0, d1s, rks_a, hh, h_phi_1, alpha_t, t, use_corrector)

    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(rks_a ** (i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    r_mat, b_vec = np.stack(rows), np.asarray(b)

    x_t = x_t_
    if d1s:
        rhos_p = np.asarray([0.5]) if order == 2 else np.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
        x_t = x_t_ - (alpha_t * b_h) * sum(float(r) * d for r, d in zip(rhos_p, d1s, strict=True))
    if not use_corrector:
        return x_t, None
    rhos_c = np.asarray([0.5]) if order == 1 else np.linalg.solve(r_mat, b_vec)
    model_t = data_model(x_t, t)
    corr_res = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0.0
    x_t = x_t_ - (alpha_t * b_h) * (corr_res + float(rhos_c[-1]) * (model_t - model_prev_0))
    return x_t, model_t


def _unipc_vary_coeff(data_model, x_t_, model_prev_0, d1s, rks, hh, h_phi_1, alpha_t, t, use_corrector):
    """UniPC's "vary_coeff" variant: coefficients from the inverse of the Taylor matrix C."""
    k_len = len(rks)
    cols, col = [], np.ones_like(rks)
    for k in range(1, k_len + 1):
        cols.append(col)
        col = col * rks / (k + 1)
    c_mat = np.stack(cols, axis=1)
    h_phi_ks, factorial_k, h_phi_k = [], 1, h_phi_1
    for k in range(1, k_len + 2):
        h_phi_ks.append(h_phi_k)
        h_phi_k = h_phi_k / hh - 1 / factorial_k
        factorial_k *= k + 1

    def residual(coeffs: np.ndarray) -> np.ndarray:
        return sum(float(c) * d for c, d in zip(coeffs, d1s, strict=True))

    x_t = x_t_
    if d1s:
        a_p = np.linalg.inv(c_mat[:-1, :-1])
        for k in range(k_len - 1):
            x_t = x_t - alpha_t * h_phi_ks[k + 1] * residual(a_p[k])
    if not use_corrector:
        return x_t, None
    a_c = np.linalg.inv(c_mat)
    model_t = data_model(x_t, t)
    x_t = x_t_
    k = 0
    for k in range(k_len - 1):
        x_t = x_t - alpha_t * h_phi_ks[k + 1] * residual(a_c[k][:-1])
    # Upstream uses the loop's last k here (0 when there is no history): kept as is.
    x_t = x_t - alpha_t * h_phi_ks[k_len] * ((model_t - model_prev_0) * float(a_c[k][-1]))
    return x_t, model_t


def unipc(
    model: EpsModel, x: np.ndarray, timesteps: np.ndarray, callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None, variant: str = "bh1", skip_type: str = "time_uniform",
    order: int = 3, lower_order_final: bool = True, is_img2img: bool = False,
) -> np.ndarray:
    """UniPC multistep with data prediction over len(timesteps) steps of a continuous-time grid.

    txt2img starts at t = 1; img2img at T[−1]/1000 + 1/1000. The UNet sees τ = (t − 1/N)·1000 (fractional).
    `order` is capped at the step count (A1111 fails with an assertion instead).
    """
    if variant not in ("bh1", "bh2", "vary_coeff"):
        raise ValueError(f"unknown UniPC variant {variant!r}")
    if len(timesteps) == 0:
        return x
    ns = VPSchedule(model.alphas_cumprod)
    steps = len(timesteps)
    order = max(1, min(order, steps))
    t_0 = 1.0 / ns.total_n
    t_T = float(timesteps[-1]) / ns.total_n + t_0 if is_img2img else 1.0
    grid = unipc_time_steps(ns, skip_type, t_T, t_0, steps)

    def data_model(x: np.ndarray, t: float) -> np.ndarray:
        eps = model.eps(x, (t - t_0) * ns.total_n)
        return (x - ns.sigma(t) * eps) / ns.alpha(t)

    t_prev = [float(grid[0])]
    model_prev = [data_model(x, t_prev[0])]
    for step in range(1, steps + 1):
        t = float(grid[step])
        if step < order:
            step_order, use_corrector = step, True
        else:
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            use_corrector = step != steps
        x, model_x = _unipc_update(data_model, ns, x, model_prev, t_prev, t, step_order, use_corrector, variant)
        _report(callback, x, step - 1, model_x if model_x is not None else x)
        if step == steps:
            break  # the final model value is never needed
        if model_x is None:
            model_x = data_model(x, t)
        t_prev = (t_prev + [t])[-order:]
        model_prev = (model_prev + [model_x])[-order:]
    return x

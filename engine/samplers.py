"""Samplers over NumPy latents, written like k-diffusion's `sampling.py` (a1111-sampling.md §5).

Every sampler has the shape `sample_x(model, x, sigmas, callback=None, noise_sampler=None, **options)`:
`model(x, sigma)` returns the CFG-combined denoised prediction D(x, σ); `noise_sampler(sigma, sigma_next)`
returns the next noise draw (A1111 routes every draw through the image generators, so determinism is a
property of what is passed in); `callback(dict)` is the single place progress, previews and interrupts hook in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

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


def sample_euler(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> np.ndarray:
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022)."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        # A1111 draws the churn noise every step, even when it is not used.
        eps = noise_sampler(sigma, sigma_next) * s_noise
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        # Euler method
        x = x + d * (sigma_next - sigma_hat)
    return x


def sample_euler_ancestral(
    model: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> np.ndarray:
    """Ancestral sampling with Euler method steps."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        d = to_d(x, sigma, denoised)
        # Euler method
        x = x + d * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler as A1111 lists it: display name, aliases, the function and its options (a1111-api.md §12.1)."""

    name: str
    aliases: tuple[str, ...]
    function: Callable[..., np.ndarray]
    options: dict[str, object] = field(default_factory=dict)

    @property
    def default_scheduler(self) -> str | None:
        return self.options.get("scheduler")  # type: ignore[return-value]

    @property
    def second_order(self) -> bool:
        return bool(self.options.get("second_order", False))


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in [
        SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), sample_euler_ancestral, {"uses_ensd": True}),
        SamplerSpec("Euler", ("k_euler",), sample_euler),
    ]
}

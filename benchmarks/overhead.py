"""The NumPy loop's own cost per step at 512 px (latent 1×4×64×64), measured against one UNet call with CFG."""

from __future__ import annotations

import statistics
import time

import numpy as np

from engine.conditioning import ConstantConditioning, StepConditioning
from engine.denoiser import CFGDenoiser
from engine.pipeline import Pipeline
from engine.rng import ImageRNG
from engine.samplers import sample_euler


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _NoOpUNet:
    """Stands in for the UNet: returns a zero ε without running anything."""

    def __call__(self, sample: np.ndarray, t: float, context: np.ndarray, *_extra) -> np.ndarray:
        return np.zeros_like(sample)


def measure(pipeline: Pipeline, steps: int = 20, size: int = 512, repeats: int = 5) -> dict:
    shape = pipeline.latent_shape(size, size)
    sigmas = pipeline.sigmas("Euler", "automatic", steps).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32) * sigmas[0]
    denoised = np.zeros_like(x)
    fixed_noise = np.zeros_like(x)
    hidden = pipeline.manifest.text_hidden_size
    emb = np.random.default_rng(1).standard_normal((77, hidden)).astype(np.float32)
    conditioning = ConstantConditioning(StepConditioning(cond=(((emb, 1.0),),), uncond=(emb,)))

    def sampler_only():
        sample_euler(lambda x, s: denoised, x, sigmas, noise_sampler=lambda s, sn: fixed_noise)

    def sampler_with_rng():
        rng = ImageRNG(shape, (1,))
        rng.first()
        sample_euler(lambda x, s: denoised, x, sigmas, noise_sampler=lambda s, sn: rng.next())

    def sampler_rng_and_cfg():
        rng = ImageRNG(shape, (1,))
        rng.first()
        model = CFGDenoiser(_NoOpUNet(), pipeline.schedule, conditioning, 7.0)
        sample_euler(model, x, sigmas, noise_sampler=lambda s, sn: rng.next())

    context = np.concatenate([emb[None], emb[None]])
    unet_input = np.concatenate([x, x]) / float(np.sqrt(sigmas[steps // 2] ** 2 + 1))
    t = float(pipeline.schedule.sigma_to_t(sigmas[steps // 2]))
    pipeline.unet(unet_input, t, context)  # warm-up
    unet_call = _median_seconds(lambda: pipeline.unet(unet_input, t, context), repeats)

    result = {"latent_shape": [1, *shape], "steps": steps, "unet_call_ms_batch2": unet_call * 1e3}
    for name, function in [("sampler", sampler_only), ("sampler+rng", sampler_with_rng),
                           ("sampler+rng+cfg", sampler_rng_and_cfg)]:
        function()
        per_step = _median_seconds(function, repeats) / steps
        result[f"{name}_ms_per_step"] = per_step * 1e3
        result[f"{name}_fraction_of_unet_call"] = per_step / unet_call
    return result

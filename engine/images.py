"""Latents ↔ images: VAE decode/encode around the backend, and array ↔ PIL conversion."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from engine.backend import ExecutionBackend
from engine.bundle import Manifest


def decode_latents(backend: ExecutionBackend, manifest: Manifest, latents: np.ndarray,
                   clamp: bool = True) -> np.ndarray:
    """Latents [B, 4, h, w] → images in [0, 1], [B, 3, H, W] float32. One VAE call per image bounds memory.

    `clamp=False` keeps the decoder's overshoot, as A1111's `decode_first_stage` hands it on (§9 step 1)."""
    out = []
    for latent in latents:
        sample = (latent[None] / manifest.vae_scaling_factor).astype(np.float32)
        decoded = (backend.run("vae_decoder", {"latent_sample": sample})["sample"].astype(np.float32) + 1.0) / 2.0
        out.append(np.clip(decoded, 0.0, 1.0) if clamp else decoded)
    return np.concatenate(out)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] → PIL RGB images; 255·x truncated to uint8 as A1111 does."""
    arrays = (255.0 * np.moveaxis(images, 1, -1)).astype(np.uint8)
    return [Image.fromarray(a, mode="RGB") for a in arrays]


def vae_posterior(backend: ExecutionBackend, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1], [B, 3, H, W] → the VAE's diagonal Gaussian (mean, logvar clamped to [−30, 20]).

    One VAE call per image, as A1111 encodes a batch.
    """
    means, logvars = [], []
    for image in images:
        sample = (2.0 * image[None] - 1.0).astype(np.float32)
        parameters = next(iter(backend.run("vae_encoder", {"sample": sample}).values())).astype(np.float32)
        mean, logvar = np.split(parameters, 2, axis=1)
        means.append(mean)
        logvars.append(np.clip(logvar, -30.0, 20.0))
    return np.concatenate(means), np.concatenate(logvars)


def encode_images(
    backend: ExecutionBackend,
    manifest: Manifest,
    images: np.ndarray,
    noise: Callable[[tuple[int, ...]], np.ndarray] | None = None,
) -> np.ndarray:
    """Images in [0, 1] → scaled latents. With `noise(shape)` the posterior is sampled, one draw per image in
    order (A1111's `z = mean + std·ε`); without it the posterior mean is used (a1111-sampling.md §8.2)."""
    mean, logvar = vae_posterior(backend, images)
    if noise is not None:
        eps = np.stack([noise(mean.shape[1:]) for _ in range(len(mean))]).astype(np.float32)
        mean = mean + np.exp(0.5 * logvar) * eps
    return (mean * manifest.vae_scaling_factor).astype(np.float32)

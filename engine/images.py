"""Latents ↔ images: VAE decode/encode around the backend, and array ↔ PIL conversion."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.backend import ExecutionBackend
from engine.bundle import Manifest


def decode_latents(backend: ExecutionBackend, manifest: Manifest, latents: np.ndarray) -> np.ndarray:
    """Latents [B, 4, h, w] → images in [0, 1], [B, 3, H, W] float32. One VAE call per image bounds memory."""
    out = []
    for latent in latents:
        sample = (latent[None] / manifest.vae_scaling_factor).astype(np.float32)
        decoded = backend.run("vae_decoder", {"latent_sample": sample})["sample"]
        out.append(np.clip((decoded.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0))
    return np.concatenate(out)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] → PIL RGB images; 255·x truncated to uint8 as A1111 does."""
    arrays = (255.0 * np.moveaxis(images, 1, -1)).astype(np.uint8)
    return [Image.fromarray(a, mode="RGB") for a in arrays]

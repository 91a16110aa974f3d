"""Latents ↔ images: VAE decode/encode around the backend, and array ↔ PIL conversion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.backend import ExecutionBackend
from engine.bundle import Manifest


@dataclass(frozen=True)
class VaeTiling:
    """When and how the VAE runs in tiles. A1111 never tiles; below `threshold` latent pixels (h·w) we do not
    either, so those sizes are bit-exact with it. Above, the VAE's memory (activations ∝ pixels, 32–64
    channels at full resolution) is bounded by one tile's: overlapping `tile`² latent tiles, blended with
    linear ramps over the overlap. The VAE's GroupNorm and mid-block attention then see one tile, not the whole
    image, so tiled output is close to, not equal to, the untiled one (docs/compatibility.md)."""

    # Latent h·w: up to 1024×1024 px (factor 8) the VAE runs whole, ≈ 0.7 GiB on the shapes model (RESULTS.md).
    # Tiles lose the whole image's GroupNorm statistics; on the shapes VAE 512 px tiles changed a 640 px
    # decode by 0.09 mean |Δ| (its own reconstruction error is 0.20), larger tiles by less: so tiles are as large
    # as the threshold allows and only sizes above it, which would cost ≥ 4× more memory untiled, are tiled.
    threshold: int = 128 * 128
    tile: int = 128  # latent; 1024 px tiles
    overlap: int = 32  # latent; 256 px blended between neighbours

    def tiles(self, h: int, w: int) -> bool:
        return h * w > self.threshold


DEFAULT_TILING = VaeTiling()


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride tile−overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _ramp(length: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    """Blend weights along one axis of a tile: rising over the overlap with a neighbour before, falling
    over the overlap with one after, 1 in between (never 0, so every pixel has weight)."""
    weight = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if before and overlap:
        weight[:overlap] = np.minimum(weight[:overlap], ramp)
    if after and overlap:
        weight[length - overlap:] = np.minimum(weight[length - overlap:], ramp[::-1])
    return weight


def run_tiled(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int, overlap: int,
              scale_num: int, scale_den: int) -> np.ndarray:
    """`fn` over overlapping spatial tiles of x [1, C, h, w] (tile and overlap in x's pixels), the outputs
    (scaled by scale_num/scale_den spatially) blended into one array."""
    _, _, h, w = x.shape
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    out = weights = None
    for y in ys:
        for x0 in xs:
            part = fn(np.ascontiguousarray(x[:, :, y:y + tile, x0:x0 + tile]))
            if out is None:
                out = np.zeros((1, part.shape[1], h * scale_num // scale_den, w * scale_num // scale_den), np.float32)
                weights = np.zeros(out.shape[2:], np.float32)
            oy, ox = y * scale_num // scale_den, x0 * scale_num // scale_den
            ph, pw = part.shape[2:]
            o = overlap * scale_num // scale_den
            wy = _ramp(ph, o, y > 0, y + tile < h)
            wx = _ramp(pw, o, x0 > 0, x0 + tile < w)
            weight = wy[:, None] * wx[None, :]
            out[:, :, oy:oy + ph, ox:ox + pw] += part * weight
            weights[oy:oy + ph, ox:ox + pw] += weight
    return out / weights


def wraps(backend: ExecutionBackend) -> bool:
    """A backend with circular padding (engine/tiling.py) wraps every call's input around, so tiles would each wrap
    within themselves: the VAE of a seamless-tiling job runs whole, as A1111's always does."""
    return getattr(backend, "circular", False)


def decode_latents(backend: ExecutionBackend, manifest: Manifest, latents: np.ndarray,
                   clamp: bool = True, tiling: VaeTiling = DEFAULT_TILING) -> np.ndarray:
    """Latents [B, 4, h, w] → images in [0, 1], [B, 3, H, W] float32. One VAE call per image bounds memory;
    above `tiling.threshold` one call per tile.

    `clamp=False` keeps the decoder's overshoot, as A1111's `decode_first_stage` hands it on (A1111
    modules/processing.py: StableDiffusionProcessingTxt2Img.sample_hr_pass)."""

    def decode(sample: np.ndarray) -> np.ndarray:
        return backend.run("vae_decoder", {"latent_sample": sample})["sample"].astype(np.float32)

    out = []
    f = manifest.vae_scale_factor
    for latent in latents:
        sample = (latent[None] / manifest.vae_scaling_factor).astype(np.float32)
        if tiling.tiles(*sample.shape[2:]) and not wraps(backend):
            raw = run_tiled(decode, sample, tiling.tile, tiling.overlap, f, 1)
        else:
            raw = decode(sample)
        decoded = (raw + 1.0) / 2.0
        out.append(np.clip(decoded, 0.0, 1.0) if clamp else decoded)
    return np.concatenate(out)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] → PIL RGB images; 255·x truncated to uint8 as A1111 does."""
    arrays = (255.0 * np.moveaxis(images, 1, -1)).astype(np.uint8)
    return [Image.fromarray(a, mode="RGB") for a in arrays]


def vae_posterior(backend: ExecutionBackend, images: np.ndarray, tiling: VaeTiling = DEFAULT_TILING,
                  scale_factor: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1], [B, 3, H, W] → the VAE's diagonal Gaussian (mean, logvar clamped to [−30, 20]).

    One VAE call per image, as A1111 encodes a batch; above `tiling.threshold` (in latent pixels, at
    `scale_factor`) one call per tile, the posterior parameters blended.
    """

    def encode(sample: np.ndarray) -> np.ndarray:
        return next(iter(backend.run("vae_encoder", {"sample": sample}).values())).astype(np.float32)

    means, logvars = [], []
    f = scale_factor
    for image in images:
        sample = (2.0 * image[None] - 1.0).astype(np.float32)
        if tiling.tiles(sample.shape[2] // f, sample.shape[3] // f) and not wraps(backend):
            parameters = run_tiled(encode, sample, tiling.tile * f, tiling.overlap * f, 1, f)
        else:
            parameters = encode(sample)
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
    order (A1111's `z = mean + std·ε`); without it the posterior mean is used (A1111 modules/processing.py:
    StableDiffusionProcessingImg2Img.init)."""
    mean, logvar = vae_posterior(backend, images, scale_factor=manifest.vae_scale_factor)
    if noise is not None:
        eps = np.stack([noise(mean.shape[1:]) for _ in range(len(mean))]).astype(np.float32)
        mean = mean + np.exp(0.5 * logvar) * eps
    return (mean * manifest.vae_scaling_factor).astype(np.float32)

"""How much memory one generation job needs at its peak, estimated before it runs (service/runtime/admission.py).

The estimate is the job's peak RSS above the loaded server (models, sessions, Python): the largest of the
component calls it makes (UNet on the CFG batch at the first-pass and hires sizes, VAE decode/encode of one
image) plus the batch's images. Each call is an activation term linear in its pixels, scaled by the width of
the model's top-resolution blocks (read from the bundle's configs), plus its attention scores: a bounded chunk
when the bundle's attention is chunked (export/attention_chunking.py, recorded in the manifest), else the full
(tokens × tokens) matrix, quadratic in pixels.

The per-pixel constants are CALIBRATED by measurement (ORT CPU, arena shrinkage on, the shapes model; each
point a fresh process, increment of VmHWM over the loaded RSS, on a 2-core machine shared with other work):

| call (shapes model)            | 256 px | 512 px | 768 px | 1024 px |
|--------------------------------|--------|--------|--------|---------|
| UNet, batch 2 (CFG), MiB       |   72   |   277  |   284  |   331   |
| VAE decoder, 1 image, MiB      |   29   |   136  |   467  |   689   |
| VAE encoder, 1 image, MiB      |   33   |   199  |   280  |   528   |

From 512 px on, the UNet's attention is one 64 MiB chunk (SCORE_COPIES of it live) and the rest grows with
pixels: ≈ 80 B per latent pixel, batch item and top-level channel (48 here, 320 in SD 1.5). The VAE's top level
(32 channels here, 128 in SD 1.x) costs ≈ 16 B (decoder) and 12 B (encoder) per image pixel and channel.
Estimate / measured with SAFETY: UNet 1.8, 1.0, 1.14, 1.18; decoder 1.9, 2.9, 1.28, 1.28 (512 px over-estimates:
its single 64 MiB attention block is counted as three copies).

`SAFETY` covers what the points do not show (allocator fragmentation, other models' layouts); tests check the
estimate against fresh measurements within a stated factor (tests/service/runtime/test_memory_admission.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.bundle import Bundle

MiB = 2**20
GiB = 2**30
FLOAT_BYTES = 4

# Bytes per latent pixel per batch item per top-level UNet channel (fitted to the table above).
UNET_BYTES_PER_PX_CH = 80.0
# Bytes per image pixel per top-level VAE channel, decoder and encoder (fitted to the table above).
VAE_DECODER_BYTES_PER_PX_CH = 16.0
VAE_ENCODER_BYTES_PER_PX_CH = 12.0
# Scores, softmax output and one more temporary of a chunk live at once.
SCORE_COPIES = 3
# The finished batch as float arrays, clipped copies, uint8 arrays and PIL images/PNG bytes.
IMAGE_COPIES = 6
FIXED_BYTES = 32 * MiB
SAFETY = 1.25


@dataclass(frozen=True)
class ModelProfile:
    """What of a model decides its memory: the width of its top-resolution blocks and its attention."""

    unet_channels: int = 320
    unet_heads: int = 8
    vae_channels: int = 128
    vae_scale_factor: int = 8
    attention_chunked: bool = False
    score_budget_bytes: int = 0

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> ModelProfile:
        """From the bundle's component configs (ours and optimum's layout); SD 1.x widths where missing."""
        unet = _read_config(bundle.path / "unet" / "config.json")
        vae = _read_config(bundle.path / "vae_decoder" / "config.json")
        heads = unet.get("num_attention_heads") or unet.get("attention_head_dim") or cls.unet_heads
        heads = max(heads) if isinstance(heads, list) else int(heads)
        attention = bundle.manifest.io.get("unet", {}).get("attention") or {}
        return cls(
            unet_channels=int((unet.get("block_out_channels") or [cls.unet_channels])[0]),
            unet_heads=heads,
            vae_channels=int((vae.get("block_out_channels") or [cls.vae_channels])[0]),
            vae_scale_factor=bundle.manifest.vae_scale_factor,
            attention_chunked=bool(attention.get("chunked_attentions")),
            score_budget_bytes=int(attention.get("score_budget_bytes") or 0),
        )


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class JobSize:
    """The sizes of one job that matter for memory."""

    width: int
    height: int
    batch_size: int = 1
    hires_width: int | None = None
    hires_height: int | None = None
    encodes: bool = False  # img2img (or a hires pass through an image upscaler) runs the VAE encoder
    cfg_batch: int = 2  # cond + uncond in one UNet call


def attention_bytes(profile: ModelProfile, batch_heads: int, tokens: int) -> int:
    """Score memory of one self-attention over `tokens` queries and keys."""
    full = batch_heads * tokens * tokens * FLOAT_BYTES
    if profile.attention_chunked:
        one_row = batch_heads * tokens * FLOAT_BYTES
        full = min(full, max(profile.score_budget_bytes, one_row))
    return SCORE_COPIES * full


def unet_bytes(profile: ModelProfile, batch: int, latent_h: int, latent_w: int) -> int:
    pixels = latent_h * latent_w
    activations = UNET_BYTES_PER_PX_CH * batch * pixels * profile.unet_channels
    return int(activations) + attention_bytes(profile, batch * profile.unet_heads, pixels)


def vae_bytes(profile: ModelProfile, height: int, width: int, per_px_ch: float, tile_px: int | None) -> int:
    """One image through the VAE; `tile_px` bounds the pixels of one call when the VAE runs tiled."""
    pixels = height * width if tile_px is None else min(height * width, tile_px)
    f = profile.vae_scale_factor
    return int(per_px_ch * pixels * profile.vae_channels) + attention_bytes(profile, 1, pixels // (f * f))


def estimate_job_bytes(profile: ModelProfile, job: JobSize, vae_tile_threshold_px: int | None = None,
                       vae_tile_px: int | None = None) -> int:
    """Peak bytes of one job above the loaded server. `vae_tile_*` (image pixels) as engine/images.py tiles."""
    f = profile.vae_scale_factor
    sizes = [(job.height, job.width)]
    if job.hires_width and job.hires_height:
        sizes.append((job.hires_height, job.hires_width))
    calls = []
    for h, w in sizes:
        calls.append(unet_bytes(profile, job.cfg_batch * job.batch_size, h // f, w // f))
        tiled = vae_tile_threshold_px is not None and h * w > vae_tile_threshold_px
        tile = vae_tile_px if tiled else None
        calls.append(vae_bytes(profile, h, w, VAE_DECODER_BYTES_PER_PX_CH, tile))
        if job.encodes or len(sizes) > 1:
            calls.append(vae_bytes(profile, h, w, VAE_ENCODER_BYTES_PER_PX_CH, tile))
    h, w = sizes[-1]
    images = IMAGE_COPIES * job.batch_size * 3 * h * w * FLOAT_BYTES
    return int(SAFETY * (max(calls) + images + FIXED_BYTES))

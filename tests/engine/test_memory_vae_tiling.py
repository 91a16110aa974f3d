"""VAE decode/encode in tiles above a threshold (engine/images.py): untouched below it, close above it."""

from __future__ import annotations

import numpy as np
import pytest

from engine.images import DEFAULT_TILING, VaeTiling, decode_latents, encode_images, run_tiled, vae_posterior

SMALL_TILES = VaeTiling(threshold=32 * 32, tile=64, overlap=16)  # 512 px tiles, so a 640 px image tiles


class RecordingBackend:
    """A stand-in VAE: nearest-neighbour ×8 upsampling of the latent's first 3 channels (a local operation,
    so tiles blended with any weights must reproduce it exactly); records every call's input shape."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def run(self, component, inputs):
        x = next(iter(inputs.values()))
        self.shapes.append(x.shape)
        if component == "vae_decoder":
            return {"sample": np.repeat(np.repeat(x[:, :3], 8, 2), 8, 3)}
        return {"latent_parameters": np.concatenate([x[:, :, ::8, ::8]] * 2, axis=1)[:, :8]}


def test_blending_reproduces_a_local_operation():
    x = np.random.default_rng(0).standard_normal((1, 4, 50, 37)).astype(np.float32)
    up = run_tiled(lambda t: np.repeat(np.repeat(t, 8, 2), 8, 3), x, 24, 8, 8, 1)
    np.testing.assert_allclose(up, np.repeat(np.repeat(x, 8, 2), 8, 3), atol=1e-6)
    down = run_tiled(lambda t: t[:, :, ::8, ::8], np.repeat(np.repeat(x, 8, 2), 8, 3), 192, 64, 1, 8)
    np.testing.assert_allclose(down, x, atol=1e-6)


def test_threshold_decides_tiling(demo_pipeline):
    manifest = demo_pipeline.manifest
    side = int(DEFAULT_TILING.threshold ** 0.5)
    backend = RecordingBackend()
    decode_latents(backend, manifest, np.zeros((1, 4, side, side), np.float32))
    assert backend.shapes == [(1, 4, side, side)]  # at the threshold: one whole call, as A1111
    backend.shapes.clear()
    decode_latents(backend, manifest, np.zeros((1, 4, side + 8, side), np.float32))
    assert len(backend.shapes) == 2 and all(s[2:] == (DEFAULT_TILING.tile,) * 2 for s in backend.shapes)


def test_below_threshold_is_bit_exact(demo_pipeline):
    """Default tiling at 64 px is the plain single VAE call, bit for bit."""
    latents = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    got = decode_latents(demo_pipeline.backend, demo_pipeline.manifest, latents)
    for image, latent in zip(got, latents, strict=True):
        raw = demo_pipeline.backend.run("vae_decoder", {"latent_sample": latent[None] / demo_pipeline.manifest.vae_scaling_factor})
        assert np.array_equal(image[None], np.clip((raw["sample"] + 1.0) / 2.0, 0.0, 1.0))


def smooth_image(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = (((xx - 0.5) ** 2 + (yy - 0.3) ** 2) < 0.05).astype(np.float64)
    return np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.1 + 0.8 * disc])[None].astype(np.float32)


@pytest.fixture(scope="module")
def shapes_vae(shapes_bundle):
    from engine.backend import OrtBackend
    from engine.bundle import load_bundle

    bundle = load_bundle(shapes_bundle)
    return OrtBackend(bundle, "cpu"), bundle.manifest


@pytest.mark.slow
def test_tiled_decode_is_close(shapes_vae):
    """Above the threshold (forced low here) tiles change the shapes VAE's output by less than the VAE's own
    reconstruction error, and by much less than the image's own variation."""
    backend, manifest = shapes_vae
    image = smooth_image(640)
    latents = encode_images(backend, manifest, image)
    whole = decode_latents(backend, manifest, latents, tiling=VaeTiling(threshold=10**9))
    tiled = decode_latents(backend, manifest, latents, tiling=SMALL_TILES)
    reconstruction = np.abs(whole - image).mean()
    change = np.abs(tiled - whole).mean()
    assert change < 0.12 and change < 0.6 * reconstruction, (change, reconstruction)
    # Still the same picture, but the toy VAE's GroupNorm statistics per 512 px tile shift a colour a little.
    np.testing.assert_allclose(tiled.mean(axis=(2, 3)), whole.mean(axis=(2, 3)), atol=0.12)


@pytest.mark.fullsize
def test_default_tiling_above_1024px_is_close(shapes_vae):
    """The shipped tiling (1024 px tiles, 256 px overlap) on a 1152 px decode: 4 tiles."""
    backend, manifest = shapes_vae
    image = smooth_image(1152)
    latents = encode_images(backend, manifest, image)
    whole = decode_latents(backend, manifest, latents, tiling=VaeTiling(threshold=10**9))
    tiled = decode_latents(backend, manifest, latents)
    change = np.abs(tiled - whole).mean()
    assert change < 0.1 and change < 0.5 * np.abs(whole - image).mean(), change  # measured 0.069


@pytest.mark.slow
def test_tiled_encode_is_close(shapes_vae):
    backend, manifest = shapes_vae
    image = smooth_image(640)
    whole, _ = vae_posterior(backend, image, tiling=VaeTiling(threshold=10**9))
    tiled, _ = vae_posterior(backend, image, tiling=SMALL_TILES)
    assert tiled.shape == whole.shape == (1, 4, 80, 80)
    assert np.abs(tiled - whole).mean() < 0.3 * np.abs(whole).mean()

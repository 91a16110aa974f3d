"""A folder written by `optimum-cli export onnx` loads in the engine as it is and draws the same images as our bundle."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from engine.bundle import MANIFEST_NAME, load_bundle
from engine.images import decode_latents
from engine.pipeline import Pipeline
from engine.plan import GenerationPlan


@pytest.fixture(scope="module")
def optimum_pipeline(optimum_bundle):
    return Pipeline.from_path(optimum_bundle, "cpu")


def make_plan(pipeline, sampler="Euler", steps=6, clip_skip=1, width=64, height=64) -> GenerationPlan:
    return GenerationPlan(
        prompts=("a red circle", "a blue square"), negative_prompts=("blurry", ""), seeds=(11, 12),
        subseeds=(11, 12), width=width, height=height, steps=steps, cfg_scale=7.0, sampler=sampler,
        scheduler="automatic", batch_size=2, clip_skip=clip_skip,
    )


def snapshot(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


@pytest.mark.slow
def test_optimum_folder_is_read_as_it_is(optimum_bundle, optimum_pipeline):
    before = snapshot(optimum_bundle)
    assert not (optimum_bundle / MANIFEST_NAME).exists()
    manifest = load_bundle(optimum_bundle).manifest
    assert manifest.source_kind == "optimum"
    assert (manifest.vae_scale_factor, manifest.latent_channels, manifest.prediction_type) == (8, 4, "epsilon")
    assert manifest.text_hidden_size == 32 and manifest.text_num_layers == 2
    # optimum's UNet takes one scalar timestep for the whole batch; the engine adapts to it.
    assert not optimum_pipeline.unet.per_sample_timestep
    optimum_pipeline.txt2img(make_plan(optimum_pipeline, steps=2))
    assert snapshot(optimum_bundle) == before  # nothing written into the folder


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_same_images_as_our_bundle(demo_pipeline, optimum_pipeline, sampler):
    ours = demo_pipeline.txt2img(make_plan(demo_pipeline, sampler))
    theirs = optimum_pipeline.txt2img(make_plan(optimum_pipeline, sampler))
    ours_latents, their_latents = np.stack(ours.latents), np.stack(theirs.latents)
    # Two independent exports of the same weights: equal up to float32 rounding.
    assert np.abs(ours_latents - their_latents).max() <= 1e-5 * np.abs(ours_latents).max()
    ours_images = decode_latents(demo_pipeline.backend, demo_pipeline.manifest, ours_latents)
    their_images = decode_latents(optimum_pipeline.backend, optimum_pipeline.manifest, their_latents)
    assert np.abs(ours_images - their_images).max() <= 1e-4
    assert [im.size for im in theirs.images] == [(64, 64), (64, 64)]
    assert np.abs(ours_latents[0] - ours_latents[1]).max() > 1e-2


def test_clip_skip_falls_back_with_a_warning(optimum_pipeline, caplog):
    """optimum's text encoder has no per-layer output: clip skip 2 runs as clip skip 1 and says so."""
    plain = optimum_pipeline.txt2img(make_plan(optimum_pipeline, steps=2))
    with caplog.at_level(logging.WARNING, logger="engine"):
        skipped = optimum_pipeline.txt2img(make_plan(optimum_pipeline, steps=2, clip_skip=2))
    assert any("clip skip" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.stack(plain.latents), np.stack(skipped.latents))

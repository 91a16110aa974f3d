"""Admission control for seamless-tiling jobs (service/runtime/admission.py): their VAE runs whole, and the first
one makes a second set of UNet/VAE sessions resident."""

from __future__ import annotations

from dataclasses import replace

from engine.pipeline import Pipeline
from tests.engine.test_tiling import make_plan


def test_admission_counts_a_whole_vae_for_tiled_jobs():
    from engine.memory import ModelProfile
    from service.runtime.admission import estimate

    profile = ModelProfile(attention_chunked=True, score_budget_bytes=64 << 20)  # as our exports are
    plan = make_plan(["a"], 1536, 1536, tiling=False)
    assert estimate(replace(plan, tiling=True), profile) > estimate(plan, profile)
    small = make_plan(["a"], 512, 512, tiling=False)
    assert estimate(replace(small, tiling=True), profile) == estimate(small, profile)


def test_admission_counts_the_tiled_sessions_until_they_exist(demo_bundle):
    from service.runtime.admission import tiled_sessions_bytes

    weights = sum(p.stat().st_size for c in ("unet", "vae_decoder", "vae_encoder")
                  for p in (demo_bundle / c).glob("model.onnx*"))
    pipeline = Pipeline.from_path(demo_bundle, "cpu")
    assert tiled_sessions_bytes(demo_bundle, pipeline) == weights > 0
    pipeline.tiled()
    assert tiled_sessions_bytes(demo_bundle, pipeline) == 0

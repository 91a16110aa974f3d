"""Seamless tiling on OpenVINO (engine/openvino_tiling.py) against ONNX Runtime's circular graphs (engine/tiling.py,
itself checked against diffusers with circular convolutions in tests/engine/test_tiling.py), with and without a
LoRA set."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backend import BackendChoice
from engine.lora import NetworkUse, load_network
from engine.network_sessions import ModelNetworks
from engine.pipeline import Pipeline
from tests.export.test_trained_lora import PURPLE
from tests.export.test_trained_model import make_plan

pytest.importorskip("openvino")


def pixels(pipeline: Pipeline, tiling: bool) -> list[np.ndarray]:
    plan = make_plan(pipeline, "a red circle", seeds=(100, 101), sampler="Euler", steps=8, tiling=tiling)
    return [np.asarray(image, np.int16) for image in pipeline.txt2img(plan).images]


def with_purple(pipeline: Pipeline) -> Pipeline:
    purple = load_network(PURPLE, "purple")
    return ModelNetworks(pipeline).pipeline_for([(purple, NetworkUse("purple", 1.0, 1.0), "purple")])[0]


@pytest.mark.parametrize("lora", [False, True], ids=["base", "purple"])
def test_tiled_txt2img_on_openvino_fp32_equals_onnxruntime(shapes_bundle, lora):
    ort = Pipeline.from_path(shapes_bundle)
    ov = Pipeline.from_path(shapes_bundle, choice=BackendChoice("openvino", "fp32", threads=2))
    if lora:
        ort, ov = with_purple(ort), with_purple(ov)
    expected, got = pixels(ort, tiling=True), pixels(ov, tiling=True)
    plain = pixels(ov, tiling=False)
    for ours, theirs, untiled in zip(got, expected, plain, strict=True):
        assert np.abs(ours - theirs).max() <= 2
        assert np.abs(ours - untiled).mean() > 1  # really wrapped
    if lora:
        assert "unet:circular" in ov.backend.sessions  # the tiled UNet of the set, from its merged weights

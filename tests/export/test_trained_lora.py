"""The LoRA trained in the repo (export/train_lora.py, export/weights/loras/purple.safetensors) does what it was
trained to do on the shapes model: `<lora:purple:1>` draws the named shape purple, `:0` leaves the model alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.lora import NetworkUse, load_network
from engine.network_sessions import ModelNetworks
from tests.export.test_trained_model import dominant_colour, make_plan

PURPLE = Path(__file__).resolve().parents[2] / "export" / "weights" / "loras" / "purple.safetensors"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(shapes_bundle):
    from engine.pipeline import Pipeline

    pipeline = Pipeline.from_path(shapes_bundle, "cpu")
    return pipeline, ModelNetworks(pipeline)


def colours(pipeline, prompt: str) -> list[str | None]:
    result = pipeline.txt2img(make_plan(pipeline, prompt))
    return [dominant_colour(image) for image in result.images]


@pytest.mark.parametrize("prompt,colour", [("a red circle", "red"), ("a green square", "green")])
def test_purple_lora_turns_shapes_purple(shapes, prompt, colour):
    pipeline, networks = shapes
    purple = load_network(PURPLE, "purple")
    with_lora, _ = networks.pipeline_for([(purple, NetworkUse("purple", 1.0, 1.0), "purple")])
    assert colours(with_lora, prompt).count("purple") >= 8
    off, _ = networks.pipeline_for([(purple, NetworkUse("purple", 0.0, 0.0), "purple")])
    plain = colours(off, prompt)
    assert plain.count("purple") <= 1 and plain.count(colour) >= 8

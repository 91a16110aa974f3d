"""`<lora:purple:1>` through a real server on `--backend openvino`: the image ONNX Runtime's server makes, purple, and
the base image again after the LoRA."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests

from tests.export.test_trained_lora import PURPLE
from tests.export.test_trained_model import dominant_colour
from tests.sdapi_server import decode, running_server

pytest.importorskip("openvino")

pytestmark = pytest.mark.slow

REQUEST = {"seed": 100, "steps": 20, "width": 64, "height": 64, "batch_size": 2, "sampler_name": "Euler a"}


def images(url: str, prompt: str) -> list[np.ndarray]:
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={**REQUEST, "prompt": prompt}, timeout=300)
    assert response.status_code == 200, response.text
    return [np.asarray(decode(b64).convert("RGB")) for b64 in response.json()["images"]]


def served(shapes_bundle, workdir, backend: str) -> dict[str, list[np.ndarray]]:
    (workdir / "models" / "Lora").mkdir(parents=True)
    shutil.copy(PURPLE, workdir / "models" / "Lora" / "purple.safetensors")
    with running_server(shapes_bundle, workdir, "--backend", backend, second_model=False) as url:
        return {"base": images(url, "a red circle"), "purple": images(url, "a red circle <lora:purple:1>"),
                "again": images(url, "a red circle")}


def test_purple_lora_on_an_openvino_server_equals_onnxruntime(shapes_bundle, tmp_path):
    got = served(shapes_bundle, tmp_path / "openvino", "openvino")
    reference = served(shapes_bundle, tmp_path / "ort", "ort")
    assert [dominant_colour_of(a) for a in got["purple"]] == ["purple", "purple"]
    assert [dominant_colour_of(a) for a in got["base"]] == ["red", "red"]
    for kind in ("base", "purple"):
        for ours, theirs in zip(got[kind], reference[kind], strict=True):
            assert np.abs(ours.astype(np.int16) - theirs).max() <= 2, kind
    assert all(np.array_equal(a, b) for a, b in zip(got["again"], got["base"], strict=True))


def dominant_colour_of(array: np.ndarray) -> str | None:
    from PIL import Image

    return dominant_colour(Image.fromarray(array))

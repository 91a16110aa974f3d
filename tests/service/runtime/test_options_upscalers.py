"""Options typed and persisted as A1111's (A1111 modules/shared_options.py), and the extras upscalers: PIL's
resamplers and an
ONNX super-resolution model, each against PIL itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from engine.upscalers import OnnxUpscaler, UpscalerRegistry
from service.a1111.extras import ExtrasPlan, check_size, postprocess
from service.runtime.options import DEFAULTS, InvalidOption, Options, api_view, coerce_option


def test_get_types_ints_with_nonzero_default_as_float():
    view = api_view({"jpeg_quality": 80, "eta_noise_seed_delta": 5, "enable_pnginfo": True, "s_noise": 1.0},
                    DEFAULTS)
    assert view == {"jpeg_quality": 80.0, "eta_noise_seed_delta": 5, "enable_pnginfo": True, "s_noise": 1.0}
    assert isinstance(view["jpeg_quality"], float) and isinstance(view["eta_noise_seed_delta"], int)


@pytest.mark.parametrize("key, value, stored", [
    ("jpeg_quality", 90.0, 90), ("CLIP_stop_at_last_layers", 2, 2), ("s_noise", 1, 1.0),
    ("enable_pnginfo", 0, False), ("samples_format", "webp", "webp"), ("sd_model_checkpoint", None, None),
    ("infotext_skip_pasting", ["Seed"], ["Seed"]),
])
def test_coerce_accepts(key, value, stored):
    got = coerce_option(key, value, DEFAULTS[key])
    assert got == stored and type(got) is type(stored)


@pytest.mark.parametrize("key, value", [
    ("jpeg_quality", 90.5), ("jpeg_quality", "90"), ("jpeg_quality", 0), ("CLIP_stop_at_last_layers", 13),
    ("enable_pnginfo", "yes"), ("s_noise", float("nan")), ("samples_format", "avif"), ("randn_source", "TPU"),
    ("samples_format", None), ("eta_noise_seed_delta", True),
])
def test_coerce_refuses(key, value):
    with pytest.raises(InvalidOption):
        coerce_option(key, value, DEFAULTS[key])


def test_options_persist_atomically(tmp_path):
    path = tmp_path / "config.json"
    options = Options(path)
    options.update({"jpeg_quality": 95.0, "api_useragent": "ignored: restricted"})
    assert json.loads(path.read_text())["jpeg_quality"] == 95
    assert options.get("api_useragent") == ""
    with pytest.raises(InvalidOption):
        options.update({"jpeg_quality": 50, "samples_format": "bmp"})
    assert options.get("jpeg_quality") == 95  # nothing of a refused update is applied
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    assert Options(path).get("jpeg_quality") == 95
    overridden = options.with_overrides({"jpeg_quality": 70.0, "no_such": None})
    assert overridden["jpeg_quality"] == 70 and options.get("jpeg_quality") == 95


def nearest_x2_model(path):
    """A 2× nearest-neighbour 'super-resolution' graph: [1, 3, H, W] → [1, 3, 2H, 2W]."""
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    node = helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")
    graph = helper.make_graph(
        [node], "sr", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, None, None])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, None, None])], initializer=[scales])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


def test_onnx_upscaler_against_pil(tmp_path):
    model = OnnxUpscaler(nearest_x2_model(tmp_path / "tiny-sr.onnx"))
    assert model.scale == 2.0  # learned by a probe run: the name says nothing
    image = Image.effect_noise((20, 12), 50).convert("RGB")
    assert np.array_equal(np.asarray(model.enlarge(image)), np.asarray(image.resize((40, 24), Image.NEAREST)))
    # ×3 with a ×2 model: two passes (×4), then LANCZOS down to the multiple of 8 below 3·size (A1111).
    expected = image.resize((40, 24), Image.NEAREST).resize((80, 48), Image.NEAREST).resize((56, 32), Image.LANCZOS)
    assert np.array_equal(np.asarray(model.upscale(image, 3)), np.asarray(expected))


def test_registry_and_extras_with_a_model(tmp_path):
    nearest_x2_model(tmp_path / "SR_x2.onnx")
    registry = UpscalerRegistry(tmp_path)
    assert registry.names() == ["None", "Lanczos", "Nearest", "SR_x2"] and registry.get("SR_x2").scale == 2.0
    image = Image.effect_noise((16, 16), 50).convert("RGB")
    plan = ExtrasPlan(resize_mode=0, upscale_by=2.0, width=0, height=0, crop=False, upscaler_1="SR_x2",
                      upscaler_2="Lanczos", upscaler_2_visibility=0.25)
    out, info = postprocess(image, plan, registry)
    expected = Image.blend(image.resize((32, 32), Image.NEAREST), image.resize((32, 32), Image.LANCZOS), 0.25)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert info == {"Postprocess upscale by": 2.0, "Postprocess upscaler": "SR_x2", "Postprocess upscaler 2": "Lanczos"}
    from service.a1111.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        check_size(ExtrasPlan(0, 600.0, 0, 0, False, "Lanczos", None, 0.0), 16, 16)
    with pytest.raises(InvalidRequest):
        check_size(ExtrasPlan(0, 0.01, 0, 0, False, "Lanczos", None, 0.0), 16, 16)

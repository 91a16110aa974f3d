"""SD 2.x fp16 variant with `upcast_attention`: Q·Kᵀ, softmax and ·V run in fp32 inside the chunked attention.

On a reduced-width SD 2.x 768-v model (the shipped config, `upcast_attention: true`): the structure (every
attention's chain fp32, cast from and back to fp16 around it, chunked with the portable graph's budget), the
gate, and what the upcast is for: attention scores beyond fp16's range (65504), made by scaling the Q and K
projections, give NaN in plain fp16 and the fp32 graph's output with the upcast."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from engine.bundle import load_bundle
from export.attention_chunking import _PREFIX, BUDGET_SUFFIX
from export.onnx_layout import save_component
from export.variants.build import build_variant
from export.variants.fp16 import chunk_budget, convert_file
from tests.export.test_variants import _unet_feed as _feed

CPU = ["CPUExecutionProvider"]
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def sd2_bundle(tmp_path_factory) -> Path:
    from export.onnx_export import export_diffusers_folder
    from tests.export.family_models import reduced_config_set, save_sd2_folder

    root = tmp_path_factory.mktemp("sd2-upcast")
    configs = reduced_config_set(root / "configs")
    folder = save_sd2_folder(configs.sd2_v, root / "folder", v_prediction=True, seed=3)
    bundle = export_diffusers_folder(folder, root / "bundle")
    assert json.loads((bundle / "unet" / "config.json").read_text())["upcast_attention"] is True
    return bundle


def _attentions(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "If" and n.name.startswith(_PREFIX)]


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _constants(model: onnx.ModelProto, suffix: str) -> list[int]:
    return [int(numpy_helper.to_array(n.attribute[0].t).reshape(-1)[0]) for n in model.graph.node
            if n.op_type == "Constant" and n.output[0].startswith(_PREFIX) and n.output[0].endswith("/" + suffix)]


def _run(model_or_path, feed, tmp: Path | None = None, base_dir: Path | None = None) -> np.ndarray:
    path = model_or_path
    if isinstance(model_or_path, onnx.ModelProto):
        path = tmp / "model.onnx"
        save_component(model_or_path, path, base_dir=base_dir)  # fp32 weights still read from `base_dir`
    return ort.InferenceSession(str(path), providers=CPU).run(None, feed)[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_upcast_attention_runs_in_fp32_and_stays_chunked(sd2_bundle):
    src = sd2_bundle / "unet" / "model.onnx"
    source = onnx.load(str(src), load_external_data=False)
    converted = convert_file(src)  # the config's upcast_attention
    plain = convert_file(src, fp32_attention=False)
    attentions = _attentions(converted)
    assert len(attentions) == len(_attentions(source)) == 8  # self + cross attention in 4 transformer blocks
    producers = {o: n for n in converted.graph.node for o in n.output}
    consumers = {}
    for n in converted.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    for node in attentions:
        then, other = _branch(node, "then_branch"), _branch(node, "else_branch")
        assert [n.op_type for n in then.node] == ["MatMul", "Softmax", "MatMul"]
        assert then.output[0].type.tensor_type.elem_type == FLOAT
        assert other.output[0].type.tensor_type.elem_type == FLOAT
        # Q, Kᵀ and V come from the fp16 graph through casts to fp32; the result goes back through a cast to fp16
        outer = [name for n in then.node for name in n.input if name not in {o for m in then.node for o in m.output}]
        assert len(outer) == 3
        for name in outer:
            cast = producers[name]
            assert cast.op_type == "Cast" and cast.attribute[0].i == FLOAT, name
        after = consumers[node.output[0]]
        assert [(n.op_type, n.attribute[0].i) for n in after] == [("Cast", FLOAT16)]
    # chunked as the portable graph: the same score budget, counted in fp32 bytes
    assert _constants(converted, BUDGET_SUFFIX) == [chunk_budget(source)] * 8
    assert _constants(converted, "elem_bytes") == [4] * 8
    # without the upcast the attention is fp16 (what SD 1.x gets)
    assert {_branch(n, "then_branch").output[0].type.tensor_type.elem_type for n in _attentions(plain)} == {FLOAT16}


def test_sd2_fp16_variant_with_upcast_passes_the_gate(sd2_bundle, tmp_path):
    bundle = Path(shutil.copytree(sd2_bundle, tmp_path / "bundle"))  # not hard links (onnx refuses them)
    record = build_variant(bundle, "fp16", samples=2, size=128, steps=4)
    assert record["gate"]["passed"] is True, record["gate"]
    assert record["components"]["unet"]["fp32_attention"] is True
    assert "fp32_attention" not in record["components"]["vae_decoder"]
    assert load_bundle(bundle).variant_passed("fp16")


SCALE = 400.0  # Q and K projections ×400: attention scores ×160000


@pytest.fixture(scope="module")
def overflowing_unet(sd2_bundle, tmp_path_factory) -> Path:
    """The SD 2 UNet with its Q and K projections scaled so that attention scores leave fp16's range."""
    from engine.lora import LoraMap

    lora_map = LoraMap.load(sd2_bundle)
    scaled = {t.initializer for k, t in lora_map.targets.items()
              if t.component == "unet" and k.endswith(("_to_q", "_to_k"))}
    assert len(scaled) == 16  # 8 attentions (self + cross in 4 transformer blocks)
    folder = tmp_path_factory.mktemp("overflow") / "unet"
    folder.mkdir()
    shutil.copy(sd2_bundle / "unet" / "config.json", folder / "config.json")
    model = onnx.load(str(sd2_bundle / "unet" / "model.onnx"))
    for init in model.graph.initializer:
        if init.name in scaled:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(SCALE), init.name))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx_data")
    return folder


def test_the_scaled_model_has_scores_beyond_fp16_range(overflowing_unet, tmp_path):
    """The premise of the GPU test below, on the fp32 graph: some attention scores exceed 65504. (The CPU cannot
    show the overflow itself: ORT CPU has no fp16 MatMul/Softmax kernels, and the casts it inserts around the
    fp16 chain cancel, so the chain runs in fp32 with or without the upcast — measured: identical outputs.)"""
    from export.attention_chunking import _find
    from export.variants.unchunk import unchunk_attention

    model = onnx.load(str(overflowing_unet / "model.onnx"))
    unchunk_attention(model)
    scores = [m.scores.output[0] for m in _find(model)]
    assert len(scores) == 8
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, FLOAT, None) for name in scores)
    onnx.save(model, str(tmp_path / "scores.onnx"), save_as_external_data=True, location="scores.onnx_data")
    outputs = ort.InferenceSession(str(tmp_path / "scores.onnx"), providers=CPU).run(scores, _feed(1))
    assert max(float(np.max(np.abs(o))) for o in outputs) > 65504


@pytest.mark.gpu
def test_upcast_keeps_overflowing_attention_finite_on_a_gpu(overflowing_unet, tmp_path):
    cuda = ["CUDAExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider and an NVIDIA GPU")
    feed = _feed(1)
    reference = _run(overflowing_unet / "model.onnx", feed)
    outputs = {}
    for upcast in (False, True):
        (tmp_path / str(upcast)).mkdir()
        path = tmp_path / str(upcast) / "model.onnx"
        save_component(convert_file(overflowing_unet / "model.onnx", fp32_attention=upcast), path,
                       base_dir=overflowing_unet)
        session = ort.InferenceSession(str(path), providers=cuda)
        if session.get_providers()[0] != "CUDAExecutionProvider":
            pytest.skip(f"no usable GPU: the session got {session.get_providers()}")
        outputs[upcast] = session.run(None, feed)[0]
    assert not np.all(np.isfinite(outputs[False])) or _cosine(outputs[False], reference) < 0.99
    # Q and K are still rounded to fp16 before the fp32 chain, and these scores make the softmax nearly one-hot:
    # on the CPU (fp16 storage, fp32 arithmetic) the same graph reaches cosine 0.997
    assert np.all(np.isfinite(outputs[True])) and _cosine(outputs[True], reference) >= 0.99

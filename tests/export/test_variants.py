"""Export variants (export/variants/): fp16, TensorRT-ready and ORT-CUDA graphs of the demo bundle, their
validation gate against the portable fp32 graphs, and the engine's refusal of a variant that fails it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from engine.backend import OrtBackend
from engine.bundle import load_bundle
from engine.variants import usable_variant, variant_view
from export.variants.build import build_variant

CPU = ["CPUExecutionProvider"]
GATE = {"samples": 2, "size": 128, "steps": 4}


def _copy(bundle: Path, out: Path) -> Path:
    # Not hard links: onnx refuses external data in a file with several links.
    return Path(shutil.copytree(bundle, out))


@pytest.fixture(scope="module")
def fp16_bundle(demo_bundle, tmp_path_factory) -> Path:
    bundle = _copy(demo_bundle, tmp_path_factory.mktemp("fp16") / "bundle")
    build_variant(bundle, "fp16", **GATE)
    return bundle


@pytest.fixture(scope="module")
def trt_bundle(demo_bundle, tmp_path_factory) -> Path:
    bundle = _copy(demo_bundle, tmp_path_factory.mktemp("trt") / "bundle")
    build_variant(bundle, "trt-ready", **GATE)
    return bundle


def _unet_feed(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"sample": rng.standard_normal((2, 4, 12, 10)).astype(np.float32),
            "timestep": np.array([981.3, 0.5], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 154, 32)).astype(np.float32)}


def test_fp16_variant_passes_the_gate_and_is_recorded(fp16_bundle):
    bundle = load_bundle(fp16_bundle)
    record = bundle.manifest.variants["fp16"]
    gate = record["gate"]
    assert gate["status"] == "passed" and gate["passed"] is True
    assert gate["min_cosine"] >= 0.999 and len(gate["psnr_db"]) == GATE["samples"]
    assert gate["inputs"]["size"] == GATE["size"] and gate["inputs"]["seeds"] == [1000, 1001]
    assert record["precision"] == "fp16" and record["io_dtype"] == "float32" and record["created"]
    assert bundle.variant_passed("fp16")
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        path = bundle.variant_path(component, "fp16")
        assert path == fp16_bundle / "variants" / "fp16" / component / "model.onnx"
        assert record["components"][component]["precision"] == "fp16"
        onnx.checker.check_model(str(path))
    # The weights really are half precision, the IO stays float32 for the NumPy loop.
    unet = onnx.load(str(bundle.variant_path("unet", "fp16")))
    types = {t.data_type for t in unet.graph.initializer if t.dims and np.prod(t.dims) > 64}
    assert types == {onnx.TensorProto.FLOAT16}
    assert {i.type.tensor_type.elem_type for i in unet.graph.input if i.name != "timestep"} == {
        onnx.TensorProto.FLOAT}


def test_fp16_timestep_embedding_stays_fp32(fp16_bundle):
    """demoDiffusion's cast placement: sin/cos of t·freq in fp32 (in fp16, t = 981.3 would be 981.5)."""
    unet = onnx.load(str(fp16_bundle / "variants" / "fp16" / "unet" / "model.onnx"), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(unet)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    trig = [n for n in unet.graph.node if n.op_type in ("Sin", "Cos")]
    assert trig and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in trig)
    # Elsewhere the graph is fp16: the first Conv reads a float16 tensor.
    conv = next(n for n in unet.graph.node if n.op_type == "Conv")
    assert types.get(conv.input[0]) == onnx.TensorProto.FLOAT16


def test_fp16_unet_follows_fp32_on_other_shapes(fp16_bundle):
    """Dynamic axes survive the conversion: another size and two prompt chunks, cosine against fp32."""
    ref = ort.InferenceSession(str(fp16_bundle / "unet" / "model.onnx"), providers=CPU)
    got = ort.InferenceSession(str(fp16_bundle / "variants" / "fp16" / "unet" / "model.onnx"), providers=CPU)
    feed = _unet_feed()
    a, b = ref.run(None, feed)[0], got.run(None, feed)[0]
    assert b.dtype == np.float32 and b.shape == a.shape
    cosine = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
    assert 0.999 <= cosine < 1.0  # close, and not the fp32 graph itself


def test_trt_ready_passes_checker_sanitizer_and_equals_portable(trt_bundle, tmp_path):
    bundle = load_bundle(trt_bundle)
    record = bundle.manifest.variants["trt-ready"]
    assert record["gate"]["passed"] is True and bundle.variant_passed("trt-ready")
    assert record["components"]["unet"]["unchunked_attentions"] == 12
    path = bundle.variant_path("unet", "trt-ready")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "If"} and {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["sample"][0] == "batch" and isinstance(dims["sample"][2], str)
    assert isinstance(dims["encoder_hidden_states"][1], str)  # the token axis stays dynamic
    # Polygraphy's own sanitizer (its command line) finds nothing left to fold or clean.
    out = tmp_path / "sanitized.onnx"
    polygraphy = Path(sys.executable).with_name("polygraphy")
    subprocess.run([str(polygraphy), "surgeon", "sanitize", str(path), "--fold-constants", "--cleanup",
                    "--toposort", "-o", str(out), "--save-external-data", "sanitized.data"],
                   check=True, capture_output=True)
    assert len(onnx.load(str(out), load_external_data=False).graph.node) == len(model.graph.node)
    # ORT CPU: the same outputs as the portable graph, on a size and token count the gate did not use.
    ref = ort.InferenceSession(str(trt_bundle / "unet" / "model.onnx"), providers=CPU)
    got = ort.InferenceSession(str(path), providers=CPU)
    a, b = ref.run(None, _unet_feed(1))[0], got.run(None, _unet_feed(1))[0]
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(a))
    for component, error in record["gate"]["max_relative_error"].items():
        assert error <= 1e-4, component


def test_a_broken_variant_fails_the_gate_and_is_not_used(fp16_bundle, tmp_path):
    bundle_path = tmp_path / "bundle"
    shutil.copytree(fp16_bundle, bundle_path)
    unet_path = bundle_path / "variants" / "fp16" / "unet" / "model.onnx"
    model = onnx.load(str(unet_path))
    # Perturb the weights of the first convolution (as a bad conversion or a corrupted copy would).
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    values = numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).standard_normal(values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(values + noise * 4 * np.abs(values).max(), weight.name))
    from export.onnx_layout import save_component

    files = save_component(model, unet_path)
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    manifest["variants"]["fp16"]["components"]["unet"]["external_data"] = {files.data: files.data_bytes}
    (bundle_path / "manifest.json").write_text(json.dumps(manifest))

    # The command line re-gates the files as they are now, and exits 1.
    from export.__main__ import main

    assert main(["variant", str(bundle_path), "--fp16", "--gate-only", "--samples", str(GATE["samples"]),
                 "--size", str(GATE["size"]), "--steps", str(GATE["steps"])]) == 1
    record = load_bundle(bundle_path).manifest.variants["fp16"]
    assert record["gate"]["passed"] is False and record["gate"]["status"] == "failed"
    assert record["gate"]["min_cosine"] < 0.999 and "cosine" in record["gate"]["reason"]
    bundle = load_bundle(bundle_path)
    assert not bundle.variant_passed("fp16")
    used = usable_variant(bundle, "fp16")
    assert used.component_path("unet") == bundle_path / "unet" / "model.onnx"
    # What the engine runs on is the portable graph: bit-identical to it.
    feed = _unet_feed()
    portable = ort.InferenceSession(str(bundle_path / "unet" / "model.onnx"), providers=CPU).run(None, feed)[0]
    np.testing.assert_array_equal(OrtBackend(used).run("unet", feed)["out_sample"], portable)
    # The passing original is used: its view runs the fp16 graph.
    assert usable_variant(load_bundle(fp16_bundle), "fp16").component_path("unet") == (
        fp16_bundle / "variants" / "fp16" / "unet" / "model.onnx")
    # The CUDA runtime's choice of graph (engine/trt_runtime.py) follows the gate the same way.
    from engine.trt_runtime import CUDA_VARIANTS, variant_graph

    assert variant_graph(bundle, "unet", CUDA_VARIANTS) == ("portable", bundle_path / "unet" / "model.onnx")
    assert variant_graph(load_bundle(fp16_bundle), "unet", CUDA_VARIANTS) == (
        "fp16", fp16_bundle / "variants" / "fp16" / "unet" / "model.onnx")


def test_a_variant_with_missing_files_is_not_offered(fp16_bundle, tmp_path):
    bundle_path = tmp_path / "bundle"
    shutil.copytree(fp16_bundle, bundle_path)
    (bundle_path / "variants" / "fp16" / "unet" / "model.onnx_data").write_bytes(b"truncated")
    bundle = load_bundle(bundle_path)
    assert bundle.variant_path("unet", "fp16") is None
    assert variant_view(bundle, "fp16").component_path("unet") == bundle_path / "unet" / "model.onnx"
    assert bundle.variant_path("unet", "no-such-variant") is None and not bundle.variant_passed("no-such-variant")


def test_ort_cuda_variant_is_built_checked_and_waits_for_a_gpu(demo_bundle, tmp_path):
    bundle_path = _copy(demo_bundle, tmp_path / "bundle")
    record = build_variant(bundle_path, "ort-cuda", **GATE)
    gate = record["gate"]
    assert gate["passed"] is None and gate["status"] == "needs-gpu" and "GPU" in gate["reason"]
    bundle = load_bundle(bundle_path)
    assert not bundle.variant_passed("ort-cuda")
    unet = record["components"]["unet"]
    # ORT's SD fusions for CUDA happened (attention, GroupNorm, NHWC conv, GEGLU).
    for op in ("MultiHeadAttention", "GroupNorm", "NhwcConv", "BiasSplitGelu"):
        assert unet["fused"].get(op, 0) > 0, op
    path = bundle.variant_path("unet", "ort-cuda")
    onnx.checker.check_model(str(path))
    # Those are CUDA kernels: the CPU provider has none, which is why the gate waits for a GPU.
    with pytest.raises(Exception, match="NhwcConv|kernel"):
        ort.InferenceSession(str(path), providers=CPU)
    assert usable_variant(bundle, "ort-cuda") is bundle


def test_sdxl_fp16_variant_keeps_the_vae_fp32(tmp_path):
    """demoDiffusion and ORT's SD tooling keep the SDXL VAE in fp32 (fp16 overflows: NaN, black images)."""
    from export.onnx_export import export_pipeline
    from export.sdxl_demo import build_tiny_sdxl_pipeline

    bundle_path = export_pipeline(build_tiny_sdxl_pipeline(seed=0), tmp_path / "tiny-sdxl", name="tiny-sdxl")
    record = build_variant(bundle_path, "fp16", samples=1, size=128, steps=3)
    bundle = load_bundle(bundle_path)
    for vae in ("vae_encoder", "vae_decoder"):
        assert record["components"][vae]["path"] is None and record["components"][vae]["precision"] == "fp32"
        assert bundle.variant_path(vae, "fp16") is None
        assert usable_variant(bundle, "fp16").component_path(vae) == bundle_path / vae / "model.onnx"
    for component in ("text_encoder", "text_encoder_2", "unet"):
        assert record["components"][component]["precision"] == "fp16"
        assert bundle.variant_path(component, "fp16") is not None
    assert record["gate"]["passed"] is True and record["gate"]["min_cosine"] >= 0.999


def test_trt_ready_keeps_every_lora_weight_for_refit(trt_bundle):
    """Native engines are built from the trt-ready graph and refitted by initializer name (TensorRT's ONNX parser
    names weights so): folding must leave every LoRA target's initializer as it is, name, shape and values."""
    from engine.lora import LoraMap
    from engine.trt_backend import base_weights

    bundle = load_bundle(trt_bundle)
    lora_map = LoraMap.load(trt_bundle)
    path = bundle.variant_path("unet", "trt-ready")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name: i for i in model.graph.initializer}
    read = base_weights(trt_bundle, lora_map)
    targets = [t for t in lora_map.targets.values() if t.component == "unet"]
    assert {t.layout for t in targets} == {"N", "T"}
    for target in targets:
        init = initializers.get(target.initializer)
        assert init is not None, f"{target.initializer} is not an initializer of the trt-ready UNet"
        assert tuple(init.dims) == target.stored_shape, target.initializer
        np.testing.assert_array_equal(numpy_helper.to_array(init, base_dir=str(path.parent)),
                                      read(target.initializer), err_msg=target.initializer)

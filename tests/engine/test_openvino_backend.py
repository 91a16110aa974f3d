"""OpenVINO backend (engine/openvino_backend.py) on the shapes model against ONNX Runtime, the reference backend."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backend import BackendChoice, OrtBackend, create_backend
from engine.bundle import load_bundle
from engine.pipeline import Pipeline
from engine.plan import GenerationPlan

ov = pytest.importorskip("openvino")

from engine.openvino_backend import OpenVinoBackend, cpu_supports_bf16  # noqa: E402


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def bundle(shapes_bundle):
    return load_bundle(shapes_bundle)


def unet_feeds(bundle, size: int, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    return {
        "sample": rng.standard_normal((batch, 4, size // 8, size // 8), dtype=np.float32),
        "timestep": np.full((batch,), 500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, bundle.manifest.text_hidden_size),
                                                     dtype=np.float32),
    }


def test_fp32_unet_matches_onnxruntime(bundle):
    feeds = unet_feeds(bundle, 128)
    expected = OrtBackend(bundle, "cpu", intra_op_threads=2).run("unet", feeds)["out_sample"]
    got = OpenVinoBackend(bundle, "fp32", threads=2).run("unet", feeds)["out_sample"]
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_specs_and_names_as_onnxruntime(bundle):
    ort_backend, ov_backend = OrtBackend(bundle, "cpu"), OpenVinoBackend(bundle, "fp32")
    for component in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert ov_backend.output_names(component) == ort_backend.output_names(component)
        assert [(s.name, s.dtype) for s in ov_backend.input_specs(component)] == \
            [(s.name, s.dtype) for s in ort_backend.input_specs(component)]


def test_static_shapes_compile_once_per_shape_in_an_lru(bundle):
    backend = OpenVinoBackend(bundle, "fp32", threads=2, shapes_per_component=2)
    small, large = unet_feeds(bundle, 64), unet_feeds(bundle, 128)
    backend.run("unet", small)
    backend.run("unet", small)
    assert backend.compiles == 1
    backend.run("unet", large)
    backend.run("unet", small)
    assert backend.compiles == 2  # both shapes held
    backend.run("unet", unet_feeds(bundle, 96))  # evicts 128 (least recently used)
    backend.run("unet", small)
    assert backend.compiles == 3
    backend.run("unet", large)
    assert backend.compiles == 4


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bf16")
def test_bf16_runs_close_to_fp32(bundle):
    feeds = unet_feeds(bundle, 128)
    expected = OrtBackend(bundle, "cpu").run("unet", feeds)["out_sample"]
    got = OpenVinoBackend(bundle, "bf16", threads=2).run("unet", feeds)["out_sample"]
    assert np.isfinite(got).all()
    assert not np.array_equal(got, expected)  # really a different precision
    assert cosine(got, expected) > 0.999


def test_whole_txt2img_on_openvino_fp32_matches_onnxruntime(shapes_bundle):
    plan = GenerationPlan(prompts=("a red circle",), negative_prompts=("",), seeds=(3,), subseeds=(0,),
                          width=128, height=128, steps=3, cfg_scale=7.0, sampler="Euler", scheduler="automatic")
    reference = Pipeline.from_path(shapes_bundle).txt2img(plan).images[0]
    got = Pipeline.from_path(shapes_bundle, choice=BackendChoice("openvino", "fp32", threads=2)).txt2img(plan)
    diff = np.abs(np.asarray(got.images[0], np.int16) - np.asarray(reference, np.int16))
    assert diff.max() <= 2, diff.max()


def test_choice_validation(bundle):
    with pytest.raises(ValueError, match="openvino"):
        BackendChoice("ort", "bf16")
    with pytest.raises(ValueError):
        BackendChoice("tensorflow")
    assert isinstance(create_backend(bundle, "cpu", BackendChoice("openvino")), OpenVinoBackend)
    assert isinstance(create_backend(bundle, "cpu", BackendChoice("ort")), OrtBackend)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bf16")
def test_bf16_reads_f16_weights_written_once_into_the_bundle(shapes_bundle, tmp_path):
    from engine.openvino_backend import IR_DIR

    copy = tmp_path / "bundle"
    copy.mkdir()
    for item in shapes_bundle.iterdir():
        if not item.name.startswith("."):
            (copy / item.name).symlink_to(item)
    stale = copy / ".openvino-f16" / "unet"  # an earlier IR layout: replaced, not kept beside the current one
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"old")
    bundle = load_bundle(copy)
    feeds = unet_feeds(bundle, 64)
    from_onnx = OpenVinoBackend(bundle, "bf16", threads=2, f16_weights=False).run("unet", feeds)["out_sample"]
    backend = OpenVinoBackend(bundle, "bf16", threads=2)
    got = backend.run("unet", feeds)["out_sample"]
    ir = copy / IR_DIR / "unet"
    assert sorted(p.name for p in ir.iterdir()) == ["model.bin", "model.xml"]
    assert not stale.exists()
    onnx_bytes = (shapes_bundle / "unet" / "model.onnx_data").stat().st_size
    assert (ir / "model.bin").stat().st_size < 0.6 * onnx_bytes  # f16: half the f32 weights
    assert cosine(got, from_onnx) > 0.99999
    mtime = (ir / "model.bin").stat().st_mtime_ns
    OpenVinoBackend(bundle, "bf16", threads=2).run("unet", feeds)
    assert (ir / "model.bin").stat().st_mtime_ns == mtime  # reused, not rewritten

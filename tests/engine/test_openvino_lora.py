"""LoRA on the OpenVINO backend (engine/openvino_networks.py) against ONNX Runtime fp32's merged sessions, the
reference: the trained `purple` LoRA on the shapes model, a text-encoder LoRA, switching sets and back."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backend import BackendChoice, OrtBackend
from engine.bundle import load_bundle
from engine.lora import LoraMap, NetworkUse, load_network, merged_weights
from engine.network_sessions import ModelNetworks
from engine.pipeline import Pipeline
from engine.quality_gate import cosine
from engine.safetensors_file import write_file
from tests.engine.test_lora_switch import _lora
from tests.export.test_trained_lora import PURPLE
from tests.export.test_trained_model import dominant_colour, make_plan

ov = pytest.importorskip("openvino")

from engine.openvino_backend import IR_DIR, OpenVinoBackend, cpu_supports_bf16  # noqa: E402
from engine.openvino_networks import replace_initializers  # noqa: E402

SEEDS = (100, 101, 102, 103)


@pytest.fixture(scope="module")
def purple():
    return [(load_network(PURPLE, "purple"), NetworkUse("purple", 1.0, 1.0), "purple")]


def lora_images(pipeline: Pipeline, networks: list, steps: int = 12) -> list:
    with_lora, _ = ModelNetworks(pipeline).pipeline_for(networks)
    return with_lora.txt2img(make_plan(with_lora, "a red circle", seeds=SEEDS, sampler="Euler", steps=steps)).images


@pytest.fixture(scope="module")
def ort_purple(shapes_bundle, purple) -> list:
    return lora_images(Pipeline.from_path(shapes_bundle), purple)


def unet_feeds(bundle, batch: int = 2, size: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    return {"sample": rng.standard_normal((batch, 4, size // 8, size // 8), dtype=np.float32),
            "timestep": np.full((batch,), 500.0, np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, bundle.manifest.text_hidden_size),
                                                         dtype=np.float32)}


def test_purple_on_openvino_fp32_equals_onnxruntime(shapes_bundle, purple, ort_purple):
    assert [dominant_colour(image) for image in ort_purple].count("purple") >= 3  # the reference is purple
    pipeline = Pipeline.from_path(shapes_bundle, choice=BackendChoice("openvino", "fp32", threads=2))
    got = lora_images(pipeline, purple)
    for image, reference in zip(got, ort_purple, strict=True):
        diff = np.abs(np.asarray(image, np.int16) - np.asarray(reference, np.int16))
        assert diff.max() <= 2, diff.max()


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bf16")
def test_purple_on_openvino_bf16_is_close_and_still_purple(bundle_copy, purple, ort_purple):
    pipeline = Pipeline.from_path(bundle_copy, choice=BackendChoice("openvino", "bf16", threads=2))
    got = lora_images(pipeline, purple)
    assert [dominant_colour(image) for image in got].count("purple") >= 3
    for image, reference in zip(got, ort_purple, strict=True):
        diff = np.abs(np.asarray(image, np.float32) - np.asarray(reference, np.float32))
        assert diff.mean() < 6, diff.mean()  # bf16 drifts over the steps, not into another picture


def test_f16_ir_weights_are_replaced_through_their_convert(bundle_copy, purple):
    """The f16 IR stores a weight as an f16 Constant → Convert: the merged value replaces the f16 Constant (in f32
    inference here, so the comparison does not depend on a bf16 CPU)."""
    bundle = load_bundle(bundle_copy)
    merged, _ = merged_weights(bundle_copy, LoraMap.load(bundle_copy), [(n, u) for n, u, _ in purple])
    feeds = unet_feeds(bundle)
    ort = OrtBackend(bundle, "cpu", intra_op_threads=2)
    expected = ort.run_session(ort.session_with_initializers("unet", merged["unet"]), feeds)["out_sample"]
    base = ort.run("unet", feeds)["out_sample"]
    backend = OpenVinoBackend(bundle, "fp32", threads=2, f16_weights=True)
    got = backend.run_session(backend.session_with_initializers("unet", merged["unet"]), feeds)["out_sample"]
    assert (bundle_copy / IR_DIR / "unet" / "model.xml").is_file()  # really read from the f16 IR
    assert cosine(got - base, expected - base) > 0.999  # the LoRA's change, not only the base output
    np.testing.assert_allclose(got, expected, atol=2e-2)


def test_text_encoder_lora_on_openvino_equals_onnxruntime(shapes_bundle, tmp_path):
    lora_map = LoraMap.load(shapes_bundle)
    te_keys = [k for k, t in lora_map.targets.items() if t.component == "text_encoder" and not k.endswith(".bias")]
    assert te_keys  # the map has text-encoder targets
    write_file(tmp_path / "te.safetensors", _lora(lora_map, te_keys, 5))
    networks = [(load_network(tmp_path / "te.safetensors"), NetworkUse("te", 1.0, 0.0))]
    merged, _ = merged_weights(shapes_bundle, lora_map, networks)
    assert set(merged) == {"text_encoder"}
    pipeline = Pipeline.from_path(shapes_bundle)
    bundle, ort = pipeline.bundle, pipeline.backend
    ids = np.array([[49406, 320, 736, 7117, 49407] + [49407] * 72], dtype=np.int64)
    dtypes = {spec.name: spec.dtype for spec in ort.input_specs("text_encoder")}
    feeds = pipeline.embedding_table.feeds("text_encoder", ids, None, dtypes)  # + inputs_embeds where taken
    expected = ort.run_session(ort.session_with_initializers("text_encoder", merged["text_encoder"]), feeds)
    base = ort.run("text_encoder", feeds)
    backend = OpenVinoBackend(bundle, "fp32", threads=2)
    got = backend.run_session(backend.session_with_initializers("text_encoder", merged["text_encoder"]), feeds)
    name = ort.output_names("text_encoder")[0]
    assert np.abs(expected[name] - base[name]).max() > 1e-2  # the LoRA changes the encoding
    np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=1e-4)


def test_switching_to_a_lora_and_back_gives_the_base_image(shapes_bundle, purple):
    pipeline = Pipeline.from_path(shapes_bundle, choice=BackendChoice("openvino", "fp32", threads=2))
    networks = ModelNetworks(pipeline)
    assert networks.supported
    plan = make_plan(pipeline, "a red circle", seeds=SEEDS[:2], sampler="Euler", steps=6)
    base = [np.asarray(i) for i in pipeline.txt2img(plan).images]
    with_lora, _ = networks.pipeline_for(purple)
    lora = [np.asarray(i) for i in with_lora.txt2img(plan).images]
    assert all(np.abs(a.astype(int) - b).mean() > 5 for a, b in zip(lora, base, strict=True))
    none, _ = networks.pipeline_for([])
    assert none is pipeline
    again = [np.asarray(i) for i in none.txt2img(plan).images]
    assert all(np.array_equal(a, b) for a, b in zip(again, base, strict=True))  # the base model untouched
    cached, _ = networks.pipeline_for(purple)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(cached.txt2img(plan).images, lora, strict=True))


def test_a_merged_weight_without_a_constant_is_an_error(shapes_bundle):
    backend = OpenVinoBackend(load_bundle(shapes_bundle), "fp32")
    model = backend.read_model("unet")
    with pytest.raises(ValueError, match="no Constant"):
        replace_initializers(model, {"not-an-initializer": np.zeros(3, np.float32)})
    lora_map = LoraMap.load(shapes_bundle)
    name = next(t.initializer for t in lora_map.targets.values() if t.component == "unet")
    with pytest.raises(ValueError, match="shape"):
        replace_initializers(model, {name: np.zeros(3, np.float32)})


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bf16")
def test_a_merged_model_compiles_a_second_shape_as_a_fresh_one(shapes_bundle, purple):
    """A LoRA'd component meeting a new batch (hires pass, another request) is compiled again from the merged model:
    that compile must equal one made for that shape alone (bf16 rewrites the timestep path for the static shape it
    is compiled at)."""
    bundle = load_bundle(shapes_bundle)
    merged, _ = merged_weights(shapes_bundle, LoraMap.load(shapes_bundle), [(n, u) for n, u, _ in purple])
    backend = OpenVinoBackend(bundle, "bf16", threads=2, f16_weights=False, shapes_per_component=2)
    session = backend.session_with_initializers("unet", merged["unet"])
    backend.run_session(session, unet_feeds(bundle, batch=2))
    got = backend.run_session(session, unet_feeds(bundle, batch=4))["out_sample"]
    fresh = backend.session_with_initializers("unet", merged["unet"])
    expected = backend.run_session(fresh, unet_feeds(bundle, batch=4))["out_sample"]
    np.testing.assert_array_equal(got, expected)

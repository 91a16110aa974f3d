"""LoRA on native TensorRT engines by refit, the parts that run on the CPU.

- What a switch hands the refitter: a LoRA set's arrays, written into the UNet graph as initializers of those
  names, give what ONNX Runtime's merged session gives (names, shapes, the transposed layout, values); switching
  sets and back never accumulates.
- Which path a LoRA request takes: over refittable engines the UNet gets no merged session and runs on its
  profile's engine with the set's weights; elsewhere (ORT's TensorRT EP, CUDA, CPU) merged sessions, as before.
  The engines are stood in for by CPU sessions that hold the weights the refits set (a weight store applied
  through the same `RefitState.switch` NativeTrtEngine uses). The real refit on a GPU is
  tests/engine/test_trt_backend.py's `gpu` test.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from engine.backend import OrtBackend
from engine.bundle import load_bundle
from engine.lora import LoraMap, NetworkError, NetworkUse, load_network, merged_weights
from engine.network_sessions import LORA_OPTIMIZATION, ModelNetworks, NetworkBackend, RefitNetworkBackend
from engine.pipeline import Pipeline
from engine.safetensors_file import write_file
from engine.trt_backend import RefitState, WeightSet, base_weights, refit_arrays
from engine.trt_runtime import TensorrtBackend, plan_engines
from tests.engine.test_engine_smoke import make_plan
from tests.engine.test_lora_switch import _lora, demo_files  # noqa: F401  (fixture)
from tests.engine.test_trt_runtime import GPU, demo_profiles, mark_built

CPU = ["CPUExecutionProvider"]


def _feed(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
            "timestep": np.array([981.3, 20.5], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32)}


class GraphWithWeights:
    """The UNet graph with some initializers replaced by the arrays a refit sets, kept across refits as an
    engine keeps its weights; run on ONNX Runtime CPU from a rewritten copy of the graph."""

    def __init__(self, bundle_path, tmp_path):
        self.model = onnx.load(str(bundle_path / "unet" / "model.onnx"))  # weights loaded: rewritten whole
        self.shapes = {i.name: tuple(i.dims) for i in self.model.graph.initializer}
        self.tmp_path = tmp_path
        self.runs = 0

    def set(self, arrays: dict[str, np.ndarray]) -> None:
        by_name = {i.name: i for i in self.model.graph.initializer}
        for name, array in arrays.items():
            assert array.shape == self.shapes[name], name  # TensorRT wants the initializer's own shape
            by_name[name].CopyFrom(numpy_helper.from_array(array, name))

    def run(self, feed) -> np.ndarray:
        self.runs += 1
        path = self.tmp_path / f"unet-{self.runs}.onnx"
        onnx.save(self.model, str(path), save_as_external_data=True, location=path.name + ".data")
        return ort.InferenceSession(str(path), providers=CPU).run(None, feed)[0]


def test_refit_state_switches_from_base_and_only_when_the_set_changes():
    base = {"a": np.zeros(2), "b": np.ones(2), "c": np.full(2, 2.0)}
    state = RefitState(base.__getitem__)
    merges = []

    def weights(key, values):
        return WeightSet(key, lambda: merges.append(key) or values)

    applied = []
    assert state.switch(None, applied.append) is False and applied == []  # the base model is what it holds
    assert state.switch(weights("x", {"a": np.full(2, 5.0), "b": np.full(2, 6.0)}), applied.append)
    assert state.switch(weights("x", {"a": np.full(2, 9.0)}), applied.append) is False  # same set: no merge
    assert merges == ["x"]
    state.switch(weights("y", {"b": np.full(2, 7.0), "c": np.full(2, 8.0)}), applied.append)
    assert {k: v.tolist() for k, v in applied[-1].items()} == {"a": [0.0, 0.0], "b": [7.0, 7.0], "c": [8.0, 8.0]}
    state.switch(None, applied.append)
    assert {k: v.tolist() for k, v in applied[-1].items()} == {"b": [1.0, 1.0], "c": [2.0, 2.0]}

    def broken(arrays):
        raise RuntimeError("refit failed")

    with pytest.raises(RuntimeError):
        state.switch(weights("z", {"a": np.full(2, 3.0)}), broken)
    # half-refitted: the same set again is refitted, and base again resets what either set touched
    assert state.switch(weights("z", {"a": np.full(2, 3.0)}), applied.append)
    with pytest.raises(RuntimeError):
        state.switch(weights("y", {"c": np.full(2, 4.0)}), broken)
    state.switch(None, applied.append)
    assert sorted(applied[-1]) == ["a", "c"]
    with pytest.raises(RuntimeError, match="no LoRA weight map"):
        RefitState(None).switch(weights("x", {}), applied.append)


def test_refit_arrays_take_the_engine_dtype_contiguously():
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    arrays = refit_arrays({"w": transposed, "v": np.ones(3, np.float32)},
                          lambda name, dtype: np.dtype(np.float16) if name == "w" else dtype)
    assert arrays["w"].dtype == np.float16 and arrays["w"].flags.c_contiguous
    np.testing.assert_array_equal(arrays["w"], transposed)  # values and shape as given: no layout change
    assert arrays["v"].dtype == np.float32


def test_the_refitted_arrays_give_the_merged_session_output(demo_bundle, demo_files, tmp_path):  # noqa: F811
    lora_map, folder = demo_files
    bundle = load_bundle(demo_bundle)
    cpu = OrtBackend(bundle, "cpu")
    base = base_weights(demo_bundle, lora_map)
    layouts = {t.initializer: t.layout for t in lora_map.targets.values() if t.component == "unet"}
    sets = {
        "unet": [(load_network(folder / "unet.safetensors"), NetworkUse("u", 1.0, 0.8))],
        "half": [(load_network(folder / "half.safetensors"), NetworkUse("h", 1.0, -0.6))],
    }
    merged = {name: merged_weights(demo_bundle, lora_map, networks, ["unet"])[0]["unet"]
              for name, networks in sets.items()}
    assert {layouts[n] for n in merged["unet"]} == {"N", "T"}  # transposed MatMul weights and plain ones
    engine = GraphWithWeights(demo_bundle, tmp_path)
    state = RefitState(base)
    feed = _feed()
    base_out = next(iter(cpu.run("unet", feed).values()))

    def refit(arrays):
        engine.set(refit_arrays(arrays, lambda name, dtype: dtype))

    for name in ("unet", "half", "unet"):
        state.switch(WeightSet(name, lambda n=name: merged[n]), refit)
        expected = next(iter(cpu.run_session(cpu.session_with_initializers("unet", merged[name]), feed).values()))
        assert np.max(np.abs(expected - base_out)) > 1e-2  # the LoRA changes the output
        np.testing.assert_allclose(engine.run(feed), expected, rtol=1e-5, atol=1e-5, err_msg=name)
    state.switch(None, refit)
    np.testing.assert_allclose(engine.run(feed), base_out, rtol=1e-5, atol=1e-5)


class RefitStandIn:
    """A stand-in for NativeTrtEngine on the CPU: `run_with` switches its weights through `RefitState.switch`
    (as the engine does) and runs a CPU session over every weight the refits set so far."""

    def __init__(self, cpu: OrtBackend, base):
        self.cpu = cpu
        self.weights = RefitState(base)
        self.store: dict[str, np.ndarray] = {}
        self.session = None
        self.refits = 0
        self.shapes = []

    def _set(self, arrays):
        self.store.update(refit_arrays(arrays, lambda name, dtype: dtype))
        # the optimisation level of the merged sessions it is compared with: the same arithmetic
        self.session = self.cpu.session_with_initializers("unet", dict(self.store), LORA_OPTIMIZATION)

    def run_with(self, inputs, weights):
        self.refits += self.weights.switch(weights, self._set)
        self.shapes.append(inputs["sample"].shape)
        if self.session is None:
            return self.cpu.run("unet", inputs)
        return self.cpu.run_session(self.session, inputs)

    def run(self, component, inputs):
        return self.run_with(inputs, None)


@pytest.fixture()
def refit_setup(demo_bundle, demo_files, tmp_path):  # noqa: F811
    lora_map, folder = demo_files
    bundle = load_bundle(demo_bundle)
    cpu = OrtBackend(bundle, "cpu")
    from engine.trt_profiles import UNetSignature

    engines = plan_engines(bundle, tmp_path, GPU, ort.__version__,
                           demo_profiles(UNetSignature.from_specs(cpu.input_specs("unet"))), kind="unet-native")
    mark_built(engines[0])  # static-64 only: other sizes have no engine
    opened = {}

    def opener(engine):
        opened[engine.profile.name] = RefitStandIn(cpu, base_weights(demo_bundle, lora_map))
        return opened[engine.profile.name]

    return bundle, cpu, engines, opener, opened, folder


def test_lora_on_refittable_engines_runs_on_the_engine_with_the_set(refit_setup):
    bundle, cpu, engines, opener, opened, folder = refit_setup
    trt = TensorrtBackend(cpu, engines, opener, refittable=True)
    networks = ModelNetworks(Pipeline(bundle, trt))
    reference = ModelNetworks(Pipeline(bundle, cpu))  # merged ORT sessions: what the LoRA must give
    use = [(load_network(folder / "half.safetensors"), NetworkUse("h", 0.7, 0.9), "h")]
    lora, reports = networks.pipeline_for(use)
    assert isinstance(lora.backend, RefitNetworkBackend)
    assert set(lora.backend.sessions) == {"text_encoder"}  # no merged UNet session: the engine takes the set
    assert reports["half"].applied_modules > 0  # the merge ran when the set was asked for
    expected, _ = reference.pipeline_for(use)
    plan = make_plan(lora, 64, 64, steps=3)
    ours = lora.txt2img(plan).latents[0]
    np.testing.assert_allclose(ours, expected.txt2img(plan).latents[0], rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(ours - Pipeline(bundle, cpu).txt2img(plan).latents[0])) > 1e-1  # the LoRA is on
    engine = opened["static-64"]
    assert engine.refits == 1 and trt.calls == {"static-64": 3}
    # the base model on the same engine: refitted back to base weights, the base model's image
    base_plan = make_plan(networks.pipeline, 64, 64, steps=2)
    np.testing.assert_allclose(networks.pipeline.txt2img(base_plan).latents[0],
                               Pipeline(bundle, cpu).txt2img(base_plan).latents[0], rtol=1e-4, atol=1e-4)
    assert engine.refits == 2
    # the set again: its cached backend, one more refit, the same image
    again, _ = networks.pipeline_for(use)
    np.testing.assert_allclose(again.txt2img(plan).latents[0], expected.txt2img(plan).latents[0],
                               rtol=1e-4, atol=1e-4)
    assert engine.refits == 3
    # a size no engine takes: the set's merged UNet session, made on first need
    wide = make_plan(lora, 128, 64, steps=2)
    np.testing.assert_allclose(again.txt2img(wide).latents[0], expected.txt2img(wide).latents[0],
                               rtol=1e-4, atol=1e-4)
    assert "unet" in again.backend.sessions and trt.calls["cuda-fallback"] == 2


def test_lora_without_refittable_engines_uses_merged_sessions(refit_setup):
    bundle, cpu, engines, opener, opened, folder = refit_setup
    trt = TensorrtBackend(cpu, engines, opener)  # ORT's TensorRT EP engines: no refit
    networks = ModelNetworks(Pipeline(bundle, trt))
    lora, _ = networks.pipeline_for([(load_network(folder / "unet.safetensors"), NetworkUse("u"), "u")])
    assert type(lora.backend) is NetworkBackend and set(lora.backend.sessions) == {"unet"}
    lora.txt2img(make_plan(lora, 64, 64, steps=1))
    assert trt.calls == {} and not opened  # the merged session ran it, not the engine


def test_a_lora_that_cannot_be_merged_fails_the_request_before_sampling(refit_setup, tmp_path):
    bundle, cpu, engines, opener, opened, folder = refit_setup
    lora_map = LoraMap.load(bundle.path)
    key = next(k for k, t in lora_map.targets.items() if t.component == "unet" and len(t.shape) == 2)
    bad = _lora(lora_map, [key], 3)
    bad[f"{key}.lora_down.weight"] = bad[f"{key}.lora_down.weight"][:, :-1]  # wrong input width
    write_file(tmp_path / "bad.safetensors", bad)
    networks = ModelNetworks(Pipeline(bundle, TensorrtBackend(cpu, engines, opener, refittable=True)))
    with pytest.raises(NetworkError):
        networks.pipeline_for([(load_network(tmp_path / "bad.safetensors"), NetworkUse("bad"), "bad")])

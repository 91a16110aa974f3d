"""TensorRT runtime: built engines are used for the calls their profile covers, everything else runs on the CUDA
EP (logged), nothing is built at request time. On the CPU the engine and the CUDA EP are stood in for by CPU
sessions that record their calls; the real TensorRT path is the `gpu` test at the end."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.backend import OrtBackend
from engine.bundle import load_bundle
from engine.pipeline import Pipeline
from engine.trt_cache import GpuFacts, probe_gpu, write_record
from engine.trt_profiles import ProfileSpec, TrtBuildOptions, UNetSignature, unet_profile
from engine.trt_runtime import (
    FALLBACK,
    PORTABLE,
    TensorrtBackend,
    create_tensorrt_backend,
    plan_engines,
    variant_graph,
)
from tests.engine.test_engine_smoke import make_plan

GPU = GpuFacts("NVIDIA Test GPU", "8.6", "10.9.0")


@pytest.fixture(scope="module")
def bundle(demo_bundle):
    return load_bundle(demo_bundle)


@pytest.fixture(scope="module")
def cpu(bundle):
    """The module's CPU sessions: the stand-in engines and the stand-in CUDA EP share them."""
    return OrtBackend(bundle, "cpu")


@pytest.fixture(scope="module")
def signature(cpu):
    return UNetSignature.from_specs(cpu.input_specs("unet"))


def demo_profiles(signature):
    # The demo model's images are small: 64 px static, and a 48–96 px range.
    return [unet_profile(ProfileSpec("static-64", (64,) * 3, (64,) * 3), signature),
            unet_profile(ProfileSpec("dynamic-48-96", (48, 64, 96), (48, 64, 96)), signature)]


class Recording:
    """A stand-in engine: CPU sessions that record the calls they got."""

    def __init__(self, inner):
        self.inner = inner
        self.shapes = []

    def run(self, component, inputs):
        self.shapes.append(inputs["sample"].shape)
        return self.inner.run(component, inputs)


def mark_built(engine):
    engine.directory.mkdir(parents=True, exist_ok=True)
    (engine.directory / "TensorrtExecutionProvider_TRTKernel_graph_main_0_0_sm86.engine").write_bytes(b"")
    write_record(engine.directory, engine.key, 1.0)


def make_backend(bundle, cpu, signature, tmp_path, built=("static-64", "dynamic-48-96"), opener=None):
    engines = plan_engines(bundle, tmp_path, GPU, ort.__version__, demo_profiles(signature))
    for e in engines:
        if e.profile.name in built:
            mark_built(e)
    opened = {}

    def default_opener(engine):
        opened[engine.profile.name] = Recording(cpu)
        return opened[engine.profile.name]

    backend = TensorrtBackend(cpu, engines, opener or default_opener)
    return backend, opened


def test_calls_inside_built_profiles_use_their_engine(bundle, cpu, signature, tmp_path):
    backend, opened = make_backend(bundle, cpu, signature, tmp_path)
    pipeline = Pipeline(bundle, backend)
    reference = Pipeline(bundle, cpu)
    plan = make_plan(pipeline, 64, 64, steps=3)
    np.testing.assert_array_equal(pipeline.txt2img(plan).latents[0], reference.txt2img(plan).latents[0])
    assert backend.calls == {"static-64": 3}
    assert opened["static-64"].shapes == [(2, 4, 8, 8)] * 3
    pipeline.txt2img(make_plan(pipeline, 80, 56, steps=2))
    assert backend.calls["dynamic-48-96"] == 2
    assert backend.providers[0] == "TensorrtExecutionProvider"


def test_outside_every_profile_falls_back_and_says_so_once(bundle, cpu, signature, tmp_path, caplog):
    backend, opened = make_backend(bundle, cpu, signature, tmp_path)
    pipeline = Pipeline(bundle, backend)
    with caplog.at_level(logging.WARNING, logger="engine.trt_runtime"):
        pipeline.txt2img(make_plan(pipeline, 128, 64, steps=3))
    assert backend.calls == {FALLBACK: 3}
    assert not opened
    messages = [r.getMessage() for r in caplog.records if r.name == "engine.trt_runtime"]
    assert len(messages) == 1
    assert "runs on the CUDA EP" in messages[0] and "outside every TensorRT profile" in messages[0]
    assert "sample [2, 4, 8, 16]" in messages[0]


def test_profile_without_built_engine_is_never_built_at_request_time(bundle, cpu, signature, tmp_path, caplog):
    backend, opened = make_backend(bundle, cpu, signature, tmp_path, built=())
    pipeline = Pipeline(bundle, backend)
    with caplog.at_level(logging.WARNING, logger="engine.trt_runtime"):
        pipeline.txt2img(make_plan(pipeline, 64, 64, steps=2))
    assert backend.calls == {FALLBACK: 2}
    assert not opened  # no session with the TensorRT EP was even created
    assert "has no built engine (run `sdedge build-engines`)" in caplog.text
    assert backend.providers == ["CPUExecutionProvider"]
    # an engine finished later is picked up on refresh
    for e in backend.engines:
        mark_built(e)
    backend.refresh()
    pipeline.txt2img(make_plan(pipeline, 64, 64, steps=2))
    assert backend.calls["static-64"] == 2


def test_interrupted_build_is_not_an_engine(bundle, cpu, signature, tmp_path):
    backend, _ = make_backend(bundle, cpu, signature, tmp_path, built=())
    # the engine file exists but the record (written last) does not
    e = backend.engines[0]
    e.directory.mkdir(parents=True)
    (e.directory / "x.engine").write_bytes(b"")
    backend.refresh()
    assert backend.built == []


def test_engine_that_fails_to_open_falls_back(bundle, cpu, signature, tmp_path, caplog):
    def broken(engine):
        raise RuntimeError("engine built by another TensorRT")

    backend, _ = make_backend(bundle, cpu, signature, tmp_path, opener=broken)
    pipeline = Pipeline(bundle, backend)
    with caplog.at_level(logging.ERROR, logger="engine.trt_runtime"):
        pipeline.txt2img(make_plan(pipeline, 64, 64, steps=2))
    assert backend.calls == {FALLBACK: 2}
    assert caplog.text.count("did not open") == 1


def test_engines_are_keyed_to_this_gpu(bundle, signature, tmp_path):
    a = plan_engines(bundle, tmp_path, GPU, "1.31.1", demo_profiles(signature))
    b = plan_engines(bundle, tmp_path, dataclasses.replace(GPU, compute_capability="8.9"), "1.31.1",
                     demo_profiles(signature))
    assert {e.directory for e in a}.isdisjoint(e.directory for e in b)
    assert all(e.key.variant == PORTABLE for e in a)  # the demo bundle has no trt-ready variant


class FakeVariants:
    """A bundle with the export-variant records of the gpu-export branch (variant_passed / variant_path)."""

    def __init__(self, bundle, passed: dict[str, bool], root: Path):
        self.bundle, self.passed, self.root = bundle, passed, root

    def variant_passed(self, variant):
        return self.passed.get(variant, False)

    def variant_path(self, component, variant):
        return self.root / variant / component / "model.onnx" if component != "vae_decoder" else None

    def component_path(self, component):
        return self.bundle.component_path(component)


def test_variant_choice(bundle, tmp_path):
    fake = FakeVariants(bundle, {"ort-cuda": False, "fp16": True, "trt-ready": True}, tmp_path)
    assert variant_graph(fake, "unet", ("ort-cuda", "fp16")) == ("fp16", tmp_path / "fp16/unet/model.onnx")
    assert variant_graph(fake, "unet", ("trt-ready",))[0] == "trt-ready"
    # a variant without that component: the portable graph
    assert variant_graph(fake, "vae_decoder", ("fp16",)) == (PORTABLE, bundle.component_path("vae_decoder"))
    fake.passed = {"fp16": False}  # failed its gate: never used
    assert variant_graph(fake, "unet", ("ort-cuda", "fp16"))[0] == PORTABLE
    assert variant_graph(bundle, "unet", ("ort-cuda",)) == (PORTABLE, bundle.component_path("unet"))


def test_without_gpu_tensorrt_preset_is_plain_ort(bundle, caplog):
    if probe_gpu() is not None:
        pytest.skip("a GPU with TensorRT is present")
    with caplog.at_level(logging.WARNING):
        backend = create_tensorrt_backend(bundle)
    assert isinstance(backend, OrtBackend)
    assert "no NVIDIA GPU with TensorRT" in caplog.text


@pytest.mark.gpu
def test_real_engine_build_and_use(bundle, signature, tmp_path):
    gpu = probe_gpu()
    if gpu is None or "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs an NVIDIA GPU, TensorRT and onnxruntime-gpu with TensorrtExecutionProvider")
    from engine.trt_build import build_engines
    from engine.trt_runtime import create_cuda_backend, open_ort_trt_engine, timing_cache_dir

    profiles = demo_profiles(signature)
    results = build_engines(bundle, tmp_path, gpu, profiles, TrtBuildOptions())
    assert [r.skipped for r in results] == [False, False]
    assert all(r.skipped for r in build_engines(bundle, tmp_path, gpu, profiles))  # cached
    engines = plan_engines(bundle, tmp_path, gpu, ort.__version__, profiles)
    backend = TensorrtBackend(create_cuda_backend(bundle), engines,
                              open_ort_trt_engine(bundle, TrtBuildOptions(), timing_cache_dir(tmp_path, gpu)))
    cpu = Pipeline(bundle, OrtBackend(bundle, "cpu"))
    plan = make_plan(cpu, 64, 64, steps=4)
    np.testing.assert_allclose(Pipeline(bundle, backend).txt2img(plan).latents[0], cpu.txt2img(plan).latents[0],
                               atol=5e-2)  # fp16 engine
    assert backend.calls == {"static-64": 4}
    Pipeline(bundle, backend).txt2img(make_plan(cpu, 128, 64, steps=1))
    assert backend.calls[FALLBACK] == 1


def test_native_engines_preferred_only_when_built_and_importable(bundle, signature, tmp_path):
    from engine.trt_runtime import prefer_native

    ort_engines = plan_engines(bundle, tmp_path, GPU, "1.31.1", demo_profiles(signature))
    native = plan_engines(bundle, tmp_path, GPU, "1.31.1", demo_profiles(signature), kind="unet-native")
    assert {e.directory for e in ort_engines}.isdisjoint(e.directory for e in native)  # other file format
    assert not prefer_native(ort_engines, native)  # nothing built
    mark_built(ort_engines[0])
    mark_built(native[0])
    try:
        import tensorrt  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    assert prefer_native(ort_engines, native) is importable
    mark_built(ort_engines[1])  # ORT's EP covers more profiles: keep it
    assert not prefer_native(ort_engines, native)


def test_unet_signature_without_the_cuda_session(bundle, cpu, signature, tmp_path):
    # With a graph to read the signature from, building a Pipeline does not create the fallback's UNet session.
    fallback = OrtBackend(bundle, "cpu")
    engines = plan_engines(bundle, tmp_path, GPU, ort.__version__, demo_profiles(signature))
    for e in engines:
        mark_built(e)
    backend = TensorrtBackend(fallback, engines, lambda e: Recording(cpu), unet_graph=bundle.component_path("unet"))
    assert backend.input_specs("unet") == cpu.input_specs("unet")
    assert backend.output_names("unet") == cpu.output_names("unet")
    pipeline = Pipeline(bundle, backend)
    pipeline.txt2img(make_plan(pipeline, 64, 64, steps=1))
    assert backend.providers == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert "unet" not in fallback._sessions and "text_encoder" in fallback._sessions


def test_fallback_gets_the_dtypes_its_graph_takes(bundle, cpu, signature, tmp_path):
    """Engines' graph fp32, the CUDA EP's variant fp16 (stood in for by a recorder reporting fp16 inputs)."""

    class Fp16Variant:
        def __init__(self):
            self.got = []

        def input_specs(self, component):
            return [dataclasses.replace(s, dtype="float16") for s in cpu.input_specs(component)]

        def run(self, component, inputs):
            self.got.append({k: v.dtype for k, v in inputs.items()})
            return cpu.run(component, {k: v.astype(np.float32) for k, v in inputs.items()})

    fallback = Fp16Variant()
    engines = plan_engines(bundle, tmp_path, GPU, ort.__version__, demo_profiles(signature))
    backend = TensorrtBackend(fallback, engines, lambda e: Recording(cpu), unet_graph=bundle.component_path("unet"))
    x = np.zeros((2, 4, 8, 8), np.float32)
    inputs = {"sample": x, "timestep": np.zeros(2, np.float32), "encoder_hidden_states": np.zeros((2, 77, 32), np.float32)}
    backend.run("unet", inputs)  # nothing built: the fallback
    assert fallback.got == [{"sample": np.float16, "timestep": np.float16, "encoder_hidden_states": np.float16}]

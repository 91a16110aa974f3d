"""`sdedge build-engines`: without a GPU it exits non-zero with the reason; the build loop skips built engines."""

from __future__ import annotations

import pytest

from engine.bundle import load_bundle
from engine.trt_cache import GpuFacts, is_built, probe_gpu, write_record
from engine.trt_profiles import ProfileSpec, UNetSignature, unet_profile
from service.cli import build_engines as cli
from service.cli.commands import main


def test_no_gpu_exits_with_the_reason(demo_bundle, capsys):
    if probe_gpu() is not None:
        pytest.skip("a GPU with TensorRT is present")
    assert main(["build-engines", "--model", str(demo_bundle)]) == cli.NO_GPU
    err = capsys.readouterr().err
    assert "sdedge build-engines:" in err and "nothing was built" in err


@pytest.mark.parametrize("gpu,trt,providers,reason", [
    (False, None, [], "no NVIDIA GPU found"),
    (True, None, [], "no TensorRT"),
    (True, "10.9.0", ["CUDAExecutionProvider", "CPUExecutionProvider"], "install onnxruntime-gpu"),
])
def test_no_gpu_reasons(monkeypatch, gpu, trt, providers, reason):
    import onnxruntime as ort

    from engine import trt_cache

    smi = "NVIDIA Test, 8.6\n" if gpu else ""
    monkeypatch.setattr(trt_cache, "query_gpu", lambda: smi)
    monkeypatch.setattr(trt_cache, "tensorrt_version", lambda: trt)
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    assert reason in cli.no_gpu_reason()


def test_build_loop_skips_built_and_reports(demo_bundle, tmp_path, monkeypatch):
    """The orchestration only (which engines, in which order, skip or force, progress callbacks): the build
    itself, ORT's TensorRT EP, is replaced by a stub that writes what a finished build leaves."""
    from engine import trt_build

    built = []

    def stub_build(bundle, engine, timing_dir, build):
        built.append(engine.profile.name)
        engine.directory.mkdir(parents=True, exist_ok=True)
        (engine.directory / "stub.engine").write_bytes(b"")
        write_record(engine.directory, engine.key, 0.0)
        return 1.5

    monkeypatch.setattr(trt_build, "build_engine", stub_build)
    bundle = load_bundle(demo_bundle)
    sig = UNetSignature(4, 32)
    profiles = [unet_profile(ProfileSpec(n, (64,) * 3, (64,) * 3), sig) for n in ("a", "b")]
    gpu = GpuFacts("NVIDIA Test", "8.6", "10.9.0")
    started, done = [], []
    results = trt_build.build_engines(bundle, tmp_path, gpu, profiles, on_start=lambda e: started.append(e),
                                      on_done=done.append)
    assert built == ["a", "b"] and [r.skipped for r in results] == [False, False]
    assert all(is_built(r.directory) for r in results) and [e.profile.name for e in started] == ["a", "b"]
    again = trt_build.build_engines(bundle, tmp_path, gpu, profiles)
    assert [r.skipped for r in again] == [True, True] and built == ["a", "b"]
    trt_build.build_engines(bundle, tmp_path, gpu, profiles[:1], force=True)
    assert built == ["a", "b", "a"]


def test_unet_signature_of_demo(demo_bundle):
    from engine.trt_build import unet_signature

    sig = unet_signature(load_bundle(demo_bundle))
    assert sig.in_channels == 4 and sig.per_sample_timestep and sig.context_dim > 0

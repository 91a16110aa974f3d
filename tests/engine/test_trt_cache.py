"""TensorRT engine cache: keys differ when any part differs and are stable otherwise; GPU facts are injected."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from engine.trt_cache import (
    ENGINE_RECORD,
    EngineKey,
    GpuFacts,
    decode_trt_version,
    engine_dir,
    has_nvidia_gpu,
    is_built,
    model_fingerprint,
    parse_gpu_query,
    probe_gpu,
    write_record,
)
from engine.trt_profiles import ProfileSpec, TrtBuildOptions, UNetSignature, a1111_profiles, unet_profile

SD15 = UNetSignature(4, 768)
GPU = GpuFacts("NVIDIA GeForce RTX 4090", "8.9", "10.9.0")
KEY = EngineKey("unet", GPU, "1.31.1", "ab" * 32, "trt-ready", a1111_profiles(SD15)[0], TrtBuildOptions())


def test_key_is_stable():
    same = EngineKey("unet", GpuFacts("NVIDIA GeForce RTX 4090", "8.9", "10.9.0"), "1.31.1", "ab" * 32,
                     "trt-ready", a1111_profiles(SD15)[0], TrtBuildOptions())
    assert same.directory_name() == KEY.directory_name()
    assert KEY.directory_name().startswith("unet-static-512-sm89-trt10.9.0-")
    assert len(KEY.directory_name().rsplit("-", 1)[1]) == 12


@pytest.mark.parametrize("change", [
    dict(component="unet_xl"),
    dict(gpu=dataclasses.replace(GPU, name="NVIDIA GeForce RTX 4080")),  # same architecture, other board
    dict(gpu=dataclasses.replace(GPU, compute_capability="8.6")),
    dict(gpu=dataclasses.replace(GPU, tensorrt_version="10.8.0")),
    dict(ort_version="1.30.0"),
    dict(model_hash="cd" * 32),
    dict(variant="portable"),
    dict(profile=a1111_profiles(SD15)[1]),
    dict(profile=a1111_profiles(SD15, batch_max=2)[0]),  # same name, other ranges
    dict(profile=a1111_profiles(UNetSignature(4, 1024))[0]),  # same name, other context width
    dict(build=TrtBuildOptions(fp16=False)),
    dict(build=TrtBuildOptions(max_workspace_bytes=1 << 30)),
])
def test_key_differs_when_any_part_differs(change):
    other = dataclasses.replace(KEY, **change)
    assert other.directory_name() != KEY.directory_name()
    assert other.digest() != KEY.digest()


def test_cuda_graph_flag_is_not_part_of_the_engine():
    # CUDA graphs replay the same engine: no rebuild
    assert dataclasses.replace(KEY, build=TrtBuildOptions(cuda_graph=True)).digest() == KEY.digest()


def test_directory_name_is_a_safe_folder_name():
    odd = dataclasses.replace(KEY, profile=unet_profile(ProfileSpec("my profile/1", (512,) * 3, (512,) * 3), SD15))
    name = odd.directory_name()
    assert "/" not in name and " " not in name


def test_is_built_needs_record_and_engine(tmp_path):
    d = engine_dir(tmp_path, KEY)
    assert not is_built(d)
    d.mkdir()
    (d / "TensorrtExecutionProvider_TRTKernel_graph_main_123_0_0_sm89.engine").write_bytes(b"x")
    assert not is_built(d)  # an engine without the record: an interrupted build or ORT's own lazy build
    write_record(d, KEY, 12.34)
    assert is_built(d)
    assert '"digest"' in (d / ENGINE_RECORD).read_text()


def test_model_fingerprint(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "model.onnx_data").write_bytes(b"1234")
    first = model_fingerprint(tmp_path / "model.onnx")
    assert model_fingerprint(tmp_path / "model.onnx") == first
    (tmp_path / "model.onnx_data").write_bytes(b"12345")
    assert model_fingerprint(tmp_path / "model.onnx") != first
    (tmp_path / "model.onnx").write_bytes(b"graph2")
    assert model_fingerprint(tmp_path / "model.onnx") != first


def test_parse_nvidia_smi():
    assert parse_gpu_query("NVIDIA GeForce RTX 3060, 8.6\nTesla T4, 7.5\n") == ("NVIDIA GeForce RTX 3060", "8.6")
    assert parse_gpu_query("Orin (nvgpu), 8.7\n") == ("Orin (nvgpu)", "8.7")
    assert parse_gpu_query("No devices were found\n") is None
    assert parse_gpu_query("") is None


def test_decode_trt_version():
    # NV_TENSORRT_VERSION: 8.6.1 → 8601; 10.9.0 → 100900; 10.13.2 → 101302
    assert decode_trt_version(8601) == "8.6.1"
    assert decode_trt_version(8502) == "8.5.2"
    assert decode_trt_version(100900) == "10.9.0"
    assert decode_trt_version(101302) == "10.13.2"


def test_probe_gpu_injected():
    def smi():
        return "NVIDIA A100-SXM4-40GB, 8.0\n"

    assert probe_gpu(smi, lambda: "10.9.0") == GpuFacts("NVIDIA A100-SXM4-40GB", "8.0", "10.9.0")
    assert probe_gpu(smi, lambda: None) is None  # a GPU but no TensorRT: no engines
    assert has_nvidia_gpu(smi)
    assert probe_gpu(lambda: "", lambda: "10.9.0") is None
    assert not has_nvidia_gpu(lambda: "")


def test_query_falls_back_to_the_cuda_driver(monkeypatch):
    from engine import trt_cache

    def no_smi():
        raise FileNotFoundError("nvidia-smi not found")

    def old_smi():  # Jetson: nvidia-smi without --query-gpu
        raise subprocess.CalledProcessError(2, "nvidia-smi")

    for smi in (no_smi, old_smi):
        monkeypatch.setattr(trt_cache, "_nvidia_smi", smi)
        monkeypatch.setattr(trt_cache, "_cuda_driver", lambda: "Orin (nvgpu), 8.7\n")
        assert trt_cache.query_gpu() == "Orin (nvgpu), 8.7\n"
    monkeypatch.setattr(trt_cache, "_cuda_driver", lambda: (_ for _ in ()).throw(OSError("libcuda.so.1")))
    assert trt_cache.query_gpu() == ""

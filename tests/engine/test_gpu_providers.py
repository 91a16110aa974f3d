"""Execution providers: the backend reports what ONNX Runtime really gave; GPU runs only where a GPU exists."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from engine.pipeline import Pipeline
from tests.engine.test_engine_smoke import make_plan


def _has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_requested_gpu_without_one_reports_cpu(demo_bundle):
    if _has_nvidia_gpu():
        pytest.skip("a GPU is present: the fallback cannot be observed")
    pipeline = Pipeline.from_path(demo_bundle, "cuda")
    assert pipeline.backend.providers[0] == "CPUExecutionProvider"
    assert pipeline.txt2img(make_plan(pipeline, steps=1)).images[0].size == (64, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("preset,provider,runs_on", [
    ("cuda", "CUDAExecutionProvider", "CUDAExecutionProvider"),
    # no engine is built for the demo (and 64 px is outside the A1111 profiles): the UNet runs on the CUDA EP,
    # never on an engine built at request time (engine/trt_runtime.py; tests/engine/test_trt_runtime.py builds one)
    ("tensorrt", "TensorrtExecutionProvider", "CUDAExecutionProvider")])
def test_gpu_provider_matches_cpu(demo_bundle, preset, provider, runs_on):
    if not _has_nvidia_gpu() or provider not in ort.get_available_providers():
        pytest.skip(f"needs an NVIDIA GPU and onnxruntime-gpu with {provider}")
    gpu = Pipeline.from_path(demo_bundle, preset)
    assert gpu.backend.providers[0] == runs_on
    cpu = Pipeline.from_path(demo_bundle, "cpu")
    plan = make_plan(cpu, steps=4)
    np.testing.assert_allclose(gpu.txt2img(plan).latents[0], cpu.txt2img(plan).latents[0], atol=1e-2)

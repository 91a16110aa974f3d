"""`make gpu-check` (benchmarks/gpu_check.py): without a GPU, exit 2 with the reason; with one, the whole table."""

from __future__ import annotations

import pytest

from benchmarks import gpu_check
from engine.trt_cache import probe_gpu


def test_without_gpu_exits_2_with_the_reason(capsys):
    if probe_gpu() is not None:
        pytest.skip("a GPU with TensorRT is present")
    assert gpu_check.main([]) == gpu_check.NO_GPU
    err = capsys.readouterr().err
    assert err.startswith("gpu-check: skipped, ") and "nothing was checked" in err


def test_table_and_gate_verdict():
    rows = [gpu_check.Row("demo", "ort-cuda + io binding", "fp16", 0.99995, 41.23, 0.512, 12.34, "64 KiB in"),
            gpu_check.Row("demo", "ort-cpu (reference)", "portable", image_s=3.0)]
    text = gpu_check.table(rows, 512, 20)
    lines = text.splitlines()
    assert lines[0].startswith("| model | backend | graph | min cos | PSNR dB | 512px 20 steps s |")
    assert lines[2] == "| demo | ort-cuda + io binding | fp16 | 0.99995 | 41.2 | 0.51 | 12.3 | 64 KiB in |  |"
    assert "| — | — | 3.00 | — |" in lines[3]
    assert all(r.passed for r in rows)
    assert not gpu_check.Row("demo", "x", min_cosine=0.998).passed


@pytest.mark.gpu
def test_gpu_check_on_the_demo(demo_bundle, tmp_path, capsys):
    if probe_gpu() is None:
        pytest.skip("needs an NVIDIA GPU with TensorRT and onnxruntime-gpu")
    code = gpu_check.main(["--model", str(demo_bundle), "--engine-dir", str(tmp_path), "--skip-variants",
                           "--skip-cpu", "--size", "512", "--steps", "4", "--gate-size", "512", "--no-full", "--no-tests"])
    out = capsys.readouterr().out
    assert "| demo | ort-tensorrt engines |" in out
    assert code == 0

"""Quality gate (engine/quality_gate.py): measured against ONNX Runtime fp32, recorded, read by `auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.backend import BackendChoice, OrtBackend, create_backend
from engine.bundle import load_bundle
from engine.quality_gate import GateResult, cosine, pick_variant, psnr_db, record, run_gate


def test_cosine_and_psnr_against_numpy_definitions():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([2.0, 2.0, 1.0])
    assert cosine(a, b) == pytest.approx(9 / (np.sqrt(14) * 3))
    x = np.zeros((4, 4, 3), np.uint8)
    y = x.copy()
    y[0, 0, 0] = 255  # mse = 255² / 48
    assert psnr_db(x, y) == pytest.approx(10 * np.log10(48))
    assert psnr_db(x, x) == float("inf")


def gate(variant: str, passed: bool, seconds: float, reference_seconds: float = 10.0) -> GateResult:
    return GateResult(variant, "ort-fp32", passed, 0.9995 if passed else 0.98, 0.9998, (30.0,) * 8, 8, 256, 4,
                      seconds, reference_seconds)


def test_auto_is_the_reference_without_records(bundle_copy):
    assert pick_variant(load_bundle(bundle_copy)) == ("ort", "fp32")
    assert isinstance(create_backend(load_bundle(bundle_copy), "cpu", BackendChoice("auto")), OrtBackend)


def test_auto_takes_the_fastest_passing_variant(bundle_copy, monkeypatch):
    monkeypatch.setattr("engine.quality_gate.available", lambda name: True)
    record(bundle_copy, gate("openvino-bf16", passed=False, seconds=1.0))
    assert pick_variant(load_bundle(bundle_copy)) == ("ort", "fp32")  # a failed gate is never picked
    record(bundle_copy, gate("openvino-fp32", passed=True, seconds=8.0))
    assert pick_variant(load_bundle(bundle_copy)) == ("openvino", "fp32")
    record(bundle_copy, gate("openvino-bf16", passed=True, seconds=4.0))
    assert pick_variant(load_bundle(bundle_copy)) == ("openvino", "bf16")
    record(bundle_copy, gate("openvino-fp32", passed=True, seconds=12.0, reference_seconds=9.0))
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert set(manifest["quality_gate"]) == {"openvino-bf16", "openvino-fp32"}  # both kept
    monkeypatch.setattr("engine.quality_gate.available", lambda name: name != "openvino-bf16")
    assert pick_variant(load_bundle(bundle_copy)) == ("ort", "fp32")  # bf16 not runnable here; ORT fastest left


def test_gate_of_the_reference_itself_is_exact(shapes_bundle):
    """ORT fp32 against ORT fp32: cosine 1, identical images; the call times are measured."""
    result = run_gate(load_bundle(shapes_bundle), BackendChoice("ort", "fp32"), samples=2, size=64, steps=2)
    assert result.passed and result.min_cosine == pytest.approx(1.0)
    assert result.psnr_db == (float("inf"),) * 2
    assert result.unet_call_s > 0 and result.reference_unet_call_s > 0


def test_gate_of_openvino_bf16_is_measured_not_assumed(shapes_bundle):
    pytest.importorskip("openvino")
    from engine.openvino_backend import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("CPU without native bf16")
    result = run_gate(load_bundle(shapes_bundle), BackendChoice("openvino", "bf16", 2), samples=8, size=64, steps=2)
    assert result.samples == 8 and len(result.psnr_db) == 8
    assert 0.99 < result.min_cosine < 1.0  # bf16 is not bit-exact
    assert result.passed == (result.min_cosine >= 0.999)
    assert all(20 < p < float("inf") for p in result.psnr_db), result.psnr_db


def test_auto_with_gpu_providers_stays_on_onnxruntime(bundle_copy, monkeypatch):
    """The gate measures CPU variants: a GPU provider list is not swapped for OpenVINO by a CPU record."""
    monkeypatch.setattr("engine.quality_gate.available", lambda name: True)
    record(bundle_copy, gate("openvino-fp32", passed=True, seconds=1.0))
    bundle = load_bundle(bundle_copy)
    gpu = create_backend(bundle, [("CUDAExecutionProvider", {}), "CPUExecutionProvider"], BackendChoice("auto"))
    assert isinstance(gpu, OrtBackend)
    assert gpu.requested_providers[0] == ("CUDAExecutionProvider", {})
    pytest.importorskip("openvino")
    from engine.openvino_backend import OpenVinoBackend

    assert isinstance(create_backend(bundle, ["CPUExecutionProvider"], BackendChoice("auto")), OpenVinoBackend)

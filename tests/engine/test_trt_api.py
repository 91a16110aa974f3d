"""The TensorRT Python API engine/trt_backend.py calls exists in the TensorRT the `gpu` extra pins.

Importing `tensorrt` needs libnvinfer (the `tensorrt-cu13-libs` wheel) but no GPU, so on a machine where the
`gpu` extra installed, this checks every class, enum member and method we call against the real module; without
the package it skips. Why it matters: TensorRT 11 removed `BuilderFlag.FP16` (weakly typed networks), which
`build_native_engine` sets, and ONNX Runtime 1.31's TensorRT EP links libnvinfer.so.10, so the pin is 10.x.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Module attributes (dotted from `tensorrt`) and, per class, the methods/properties called on its instances.
MODULE_API = {
    "Logger", "Logger.WARNING", "Builder", "OnnxParser", "BuilderFlag.FP16", "BuilderFlag.REFIT",
    "MemoryPoolType.WORKSPACE", "Runtime", "TensorIOMode.INPUT", "Refitter", "Weights", "nptype",
}
CLASS_API = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "OnnxParser": ("parse_from_file", "get_error", "num_errors"),
    "IBuilderConfig": ("set_flag", "set_memory_pool_limit", "builder_optimization_level", "add_optimization_profile",
                       "create_timing_cache", "set_timing_cache", "get_timing_cache"),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("serialize",),
    "Runtime": ("deserialize_cuda_engine",),
    "ICudaEngine": ("create_execution_context", "get_tensor_name", "num_io_tensors", "get_tensor_mode",
                    "get_tensor_dtype"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "get_tensor_shape", "execute_async_v3"),
    "Refitter": ("get_all_weights", "set_named_weights", "refit_cuda_engine", "get_missing_weights",
                 "get_weights_prototype"),
}


def _module_attributes_used(path: Path) -> set[str]:
    """Every `trt.X.Y` / `self._trt.X` chain in a module (the local names our code gives the tensorrt module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        chain = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            chain.append(current.attr)
            current = current.value
        chain.reverse()
        if isinstance(current, ast.Name) and current.id == "trt":
            found.add(".".join(chain))
        elif isinstance(current, ast.Name) and current.id == "self" and chain[0] == "_trt":
            found.add(".".join(chain[1:]))
    # only the longest chains: `trt.Logger.WARNING` covers `trt.Logger` (inner Attribute nodes)
    return {c for c in found if c and not any(o.startswith(c + ".") for o in found)}


def test_the_list_covers_every_tensorrt_attribute_the_backend_uses():
    used = _module_attributes_used(ROOT / "engine" / "trt_backend.py")
    assert used, "the scan found no tensorrt use: it no longer matches how engine/trt_backend.py names the module"
    assert used <= MODULE_API, f"add to MODULE_API (and check against TensorRT): {sorted(used - MODULE_API)}"


def test_the_makefile_installs_the_versions_pyproject_pins():
    extra = re.search(r"^gpu = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M).group(1)
    pins = dict(re.findall(r'"([a-z0-9-]+)(?:\[[a-z,]+\])?==([0-9.]+)"', extra))
    assert pins.get("tensorrt-cu13", "").startswith("10."), pins  # ORT 1.31's TRT EP links libnvinfer.so.10
    makefile = (ROOT / "Makefile").read_text()
    for name, version in pins.items():
        assert re.search(rf'"{re.escape(name)}(\[[a-z,]+\])?=={re.escape(version)}"', makefile), (name, version)


def test_tensorrt_has_every_attribute_we_call():
    trt = pytest.importorskip("tensorrt", reason="the tensorrt package (gpu extra) is not installed")
    missing = []
    for dotted in sorted(MODULE_API):
        value = trt
        for part in dotted.split("."):
            value = getattr(value, part, None)
        if value is None:
            missing.append(dotted)
    for cls, names in CLASS_API.items():
        klass = getattr(trt, cls, None)
        missing += [f"{cls}.{n}" for n in names if klass is None or not hasattr(klass, n)]
    assert not missing, f"TensorRT {trt.__version__} lacks: {missing}"
    assert trt.__version__.split(".")[0] == "10", "ONNX Runtime 1.31's TensorRT EP links libnvinfer.so.10"

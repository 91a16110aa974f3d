"""OpenVINO execution backend: the bundle's ONNX components read directly by OpenVINO's CPU plugin.

Why: on this workload OpenVINO with static shapes ran a SD 1.5 UNet call ≈1.2× faster than ONNX Runtime's CPU EP
in f32 and ≈2.5× faster in bf16 on an avx512_bf16 CPU (benchmarks/RESULTS.md). Each component is compiled for
the exact input shapes of a call (static reshape: the plugin's fastest kernels need them) and kept in a small
LRU per component, so a server switching between two sizes recompiles (≈3 s for a UNet) only on a third.

`openvino` is an optional extra (`pip install sdedge[openvino]`); this module imports it only when the backend
is created, so nothing else in the engine pays for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from engine.backend import TensorSpec, component_bytes
from engine.bundle import Bundle
from engine.mapped_pages import DroppingPages

log = logging.getLogger(__name__)

# Our precision names → OpenVINO's INFERENCE_PRECISION_HINT. The CPU plugin's own default on a bf16-capable
# CPU is bf16 (EXECUTION_MODE_HINT=PERFORMANCE), so f32 is always asked for explicitly.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}

# Inside the bundle: hidden, so model registries never list it.
IR_DIR = ".openvino-f16"

_OV_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "f64": "float64",
              "bf16": "bfloat16"}


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_supports_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports native bf16 (avx512_bf16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """Compiled OpenVINO models for a bundle's components, one per (component, input shapes), LRU-bounded.

    `shapes_per_component`: how many compiled shapes of one component stay loaded. Each compiled model holds
    its own copy of the weights in the plugin's layout (bf16: half the f32 size), so the default keeps one:
    lean, at the cost of a recompile when the size changes (hires fix, a new resolution)."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int = 0, cache_dir: str | Path | None = None,
                 shapes_per_component: int = 1, f16_weights: bool | None = None):
        import openvino as ov

        if precision not in PRECISION_HINTS:
            raise ValueError(f"precision {precision!r}: expected one of {sorted(PRECISION_HINTS)}")
        self._ov = ov
        self._core = ov.Core()
        self.bundle = bundle
        self.precision = precision
        self.shapes_per_component = max(1, shapes_per_component)
        self.config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir:
            # The compiled blob is written there and reused by the next compile of that shape (the weights' size
            # on disk per shape; it saved ≈1 s of 4 on a SD 1.5 UNet here, so it is off by default).
            self.config["CACHE_DIR"] = str(cache_dir)
        self._io: dict[str, tuple[list[TensorSpec], list[str]]] = {}
        # bf16 computes from f16-stored weights as well as from f32 ones (both are converted to bf16 at compile):
        # an f16 copy in OpenVINO's IR (memory-mapped on read) halves what a compile reads. fp32 keeps the ONNX.
        self.f16_weights = precision == "bf16" if f16_weights is None else f16_weights
        self._compiled: dict[str, OrderedDict] = {}
        self._lock = threading.Lock()
        self.compiles = 0  # how many compiles this backend did (tests, logs)

    def _read(self, component: str):
        """The component with dynamic shapes, read from its ONNX file (or its f16 IR copy). Not kept: once
        compiled, the plugin holds the weights in its own layout (bf16 at bf16), and a kept model would hold the
        file's weights too."""
        name, _, variant = component.partition(":")
        model = self._core.read_model(str(self._source(name)))
        if variant:  # a graph derived from the component's (`unet:circular` for tiling): engine/openvino_tiling.py
            from engine.openvino_tiling import derive

            derive(model, variant)
        return model

    def _source(self, component: str) -> Path:
        """The file a component's model is read from: its ONNX, or (f16 weights) its f16 IR, written once."""
        onnx = self.bundle.component_path(component)
        if not self.f16_weights:
            return onnx
        ir = self.bundle.path / IR_DIR / component / "model.xml"
        if not ir.is_file():
            try:
                self._write_f16_ir(onnx, ir)
            except OSError as exc:  # a read-only bundle: compile from the ONNX
                log.warning("openvino: cannot write %s (%s); reading the ONNX", ir, exc)
                return onnx
        return ir

    def _write_f16_ir(self, onnx: Path, ir: Path) -> None:
        """Once per bundle and component: OpenVINO's IR with weights stored as f16, written atomically."""
        ir.parent.mkdir(parents=True, exist_ok=True)
        tmp = ir.with_name(f".tmp-{os.getpid()}-{ir.name}")
        log.info("openvino: writing f16 weights of %s to %s", onnx, ir)
        model = self._core.read_model(str(onnx))
        self._ov.save_model(model, str(tmp), compress_to_fp16=True)
        del model
        tmp.with_suffix(".bin").replace(ir.with_suffix(".bin"))
        tmp.replace(ir)

    def _ports(self, component: str) -> tuple[list[TensorSpec], list[str]]:
        with self._lock:
            if component not in self._io:
                model = self._read(component)
                specs = []
                for port in model.inputs:
                    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
                    dtype = port.get_element_type().get_type_name()
                    specs.append(TensorSpec(port.get_any_name(), shape, _OV_DTYPES.get(dtype, dtype)))
                self._io[component] = (specs, [port.get_any_name() for port in model.outputs])
            return self._io[component]

    def compiled(self, component: str, shapes: dict[str, tuple[int, ...]]):
        key = tuple(sorted(shapes.items()))
        with self._lock:
            cache = self._compiled.setdefault(component, OrderedDict())
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            while len(cache) >= self.shapes_per_component:
                cache.popitem(last=False)  # drop the least recently used shape before compiling the new one
            compiled = cache[key] = self.compile_static(self._read(component), component, shapes)
            return compiled

    def compile_static(self, model, component: str, shapes: dict[str, tuple[int, ...]]):
        """`model` (one of `component`'s, reshaped in place) compiled for `shapes`."""
        model.reshape({name: self._ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        log.info("openvino: compiling %s for %s (%s)", component, shapes, self.precision)
        # The compile reads every weight through the file mapping while writing the plugin's converted copy,
        # and the compiled model keeps the mapping: without the drop both stay resident (SD 1.5 UNet from f16:
        # 1.7 GB of file pages beside 1.7 GB of bf16 weights). Dropped as it goes (engine/mapped_pages.py).
        folder = self._source(component.partition(":")[0]).parent
        with DroppingPages([f for f in folder.iterdir() if f.is_file()]) as dropping:
            compiled = self._core.compile_model(model, "CPU", self.config)
        log.debug("openvino: %s: dropped %.0f MiB of mapped weight pages", component, dropping.dropped / 2**20)
        self.compiles += 1
        return compiled

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _infer(self.compiled(component, {name: tuple(a.shape) for name, a in inputs.items()}), inputs)

    # LoRA (engine/network_sessions.py): a component with merged weights (engine/openvino_networks.py).
    def read_model(self, component: str):
        return self._read(component)

    def session_with_initializers(self, component: str, initializers: dict[str, np.ndarray],
                                  optimization: str | None = None):
        """`component` with some ONNX initializers replaced (compiled on first run); `optimization` is ONNX
        Runtime's and does not apply."""
        from engine.openvino_networks import MergedModel

        return MergedModel(self, component, initializers)

    def run_session(self, session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _infer(session.compiled({name: tuple(a.shape) for name, a in inputs.items()}), inputs)

    def component_bytes(self, component: str) -> int:
        """The component's weight bytes on disk (f32): what a merged copy of it costs, roughly."""
        return component_bytes(self.bundle, component)

    def input_specs(self, component: str) -> list[TensorSpec]:
        return self._ports(component)[0]

    def output_names(self, component: str) -> list[str]:
        return self._ports(component)[1]

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

    def release(self, component: str | None = None) -> None:
        """Drop compiled models (all, or one component's); they are compiled again on next use."""
        with self._lock:
            for name in [component] if component else list(self._compiled):
                self._compiled.pop(name, None)


def _infer(compiled, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    request = compiled.create_infer_request()
    request.infer({name: np.ascontiguousarray(a) for name, a in inputs.items()})
    return {out.get_any_name(): np.array(request.get_tensor(out).data, copy=True) for out in compiled.outputs}

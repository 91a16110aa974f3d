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
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from engine.backend import TensorSpec, component_bytes, hold_buffers
from engine.bundle import Bundle
from engine.mapped_pages import DroppingPages
from engine.openvino_precision import keep_timestep_f32

log = logging.getLogger(__name__)

# Our precision names → OpenVINO's INFERENCE_PRECISION_HINT. The CPU plugin's own default on a bf16-capable
# CPU is bf16 (EXECUTION_MODE_HINT=PERFORMANCE), so f32 is always asked for explicitly.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}

# Inside the bundle: hidden, so model registries never list it. "-2": the timestep path's constants stay f32
# (engine/openvino_precision.py); an IR written before that has them in f16 and is not read.
IR_DIR = ".openvino-f16-2"
# Earlier layouts of that copy (the first stored the timestep path's constants in f16): removed when the current
# one is written, so an upgraded bundle does not keep a second 1.7 GB UNet copy.
STALE_IR_DIRS = (".openvino-f16",)

# Latent h·w above which a compiled model's intermediate buffers are released once the backend moves on (another
# component runs, or the job ends: engine.backend.release_memory). 64·64 = 512×512 px for a factor-8 VAE. At
# 1024 px they are GBs (SD 1.5: peak 6.3 → 3.9 GB with the whole attention, RESULTS.md issue 16); at 512 px the
# release saves ≈ 100 MB, and two workers alternating components would re-allocate on every call, so it keeps them.
RELEASE_ABOVE_LATENT_PIXELS = 64 * 64

# The constants export/attention_chunking.py puts in front of each chunked attention (its score budget).
_BUDGET_SUFFIX = "/score_budget_bytes"
# Runtime (compiled) layer types of control flow. A compiled model with one of them is never released: on
# OpenVINO 2026.4 `release_memory()` on a model with a TensorIterator (our chunked attention's Loop) made the next
# calls return garbage or NaN and, at 1024 px, segfault (measured on the shapes model; RESULTS.md, issue 16).
_LOOP_LAYERS = {"TensorIterator", "Loop", "If"}

_OV_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "f64": "float64",
              "bf16": "bfloat16"}


def _key(shapes: dict[str, tuple[int, ...]]) -> tuple:
    """A compiled model's key: its static input shapes."""
    return tuple(sorted(shapes.items()))


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
                 shapes_per_component: int = 1, f16_weights: bool | None = None, whole_attention: bool = True,
                 release_above: int = RELEASE_ABOVE_LATENT_PIXELS):
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
        self.whole_attention = whole_attention
        self.release_above = release_above
        self._releasable: set[tuple[str, tuple]] = set()  # (component, shapes) whose buffers may be released
        self._holding: set[tuple[str, tuple]] = set()  # of those, the ones that ran since their last release
        self._last_component: str | None = None
        self.releases = 0  # how many compiled models' buffers were released (tests, logs)
        hold_buffers(self)

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
            for stale in STALE_IR_DIRS:
                shutil.rmtree(self.bundle.path / stale / component, ignore_errors=True)
        return ir

    def _write_f16_ir(self, onnx: Path, ir: Path) -> None:
        """Once per bundle and component: OpenVINO's IR with weights stored as f16, written atomically."""
        ir.parent.mkdir(parents=True, exist_ok=True)
        tmp = ir.with_name(f".tmp-{os.getpid()}-{ir.name}")
        log.info("openvino: writing f16 weights of %s to %s", onnx, ir)
        model = self._core.read_model(str(onnx))
        keep_timestep_f32(model)  # its constants stay f32 in the IR
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
        key = _key(shapes)
        with self._lock:
            cache = self._compiled.setdefault(component, OrderedDict())
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
            while len(cache) >= self.shapes_per_component:
                cache.popitem(last=False)  # drop the least recently used shape before compiling the new one
            compiled = cache[key] = self.compile_static(self._read(component), component, shapes)
            self._note_releasable(component, key, compiled)
            return compiled

    def compile_static(self, model, component: str, shapes: dict[str, tuple[int, ...]]):
        """`model` (one of `component`'s, reshaped in place) compiled for `shapes`."""
        if self.whole_attention:
            self._unchunk_attention(model)
        model.reshape({name: self._ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        if self.precision == "bf16":
            keep_timestep_f32(model)
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
        shapes = {name: tuple(a.shape) for name, a in inputs.items()}
        compiled = self.compiled(component, shapes)
        self._switch_to(component, _key(shapes))
        return _infer(compiled, inputs)

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

    def _unchunk_attention(self, model) -> int:
        """Give OpenVINO the attention whole: each chunked attention's score budget (export/attention_chunking.py)
        is set beyond any size, so its If keeps the plain MatMul→Softmax→MatMul branch, which the CPU plugin fuses
        into its own attention kernel (a "Subgraph" that never holds the whole score matrix). Measured on the
        shapes model at 1024 px (bf16 and f32) and on the full-size SD 1.5 at 512 and 1024 px (bf16): bit-identical
        output to the chunked Loop, faster, smaller (1024 px UNet: ≈ 0.5 instead of ≈ 2.4 GB of buffers), and no
        TensorIterator left, so the model's buffers can be released safely (`release_buffers`). Returns how
        many attentions it changed."""
        changed = 0
        for op in model.get_ops():
            if op.get_type_name() == "Constant" and any(n.endswith(_BUDGET_SUFFIX) for n in op.output(0).get_names()):
                unbounded = self._ov.opset13.constant(np.array([2**62], np.int64))
                op.output(0).replace(unbounded.output(0))
                changed += 1
        return changed

    def _note_releasable(self, component: str, key: tuple, compiled) -> None:
        """Marks a large compiled model without control-flow layers as one whose buffers `release_buffers` frees."""
        spatial = [shape[-2] * shape[-1] for _, shape in key if len(shape) == 4]
        if not spatial or max(spatial) <= self.release_above or not hasattr(compiled, "release_memory"):
            return
        layers = {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}
        if layers & _LOOP_LAYERS:
            log.info("openvino: %s keeps its buffers (control-flow layers %s)", component, sorted(layers & _LOOP_LAYERS))
            return
        # Entries of models the LRU (or `release`) dropped go too.
        self._releasable = {(n, k) for n, k in self._releasable if k in self._compiled.get(n, {})}
        self._holding &= self._releasable
        self._releasable.add((component, key))

    def _switch_to(self, component: str, key: tuple) -> None:
        """When the component changes (text encoder → UNet → VAE decoder), the others' large buffers go: a
        compiled model keeps its intermediate buffers between calls, so the UNet's 1024 px ones stayed resident
        through the VAE decode and both set the peak (full-size SD 1.5: 6.3 GB). Within the denoising loop the
        same component runs call after call and keeps them."""
        with self._lock:
            switched = component != self._last_component
            self._last_component = component
            if (component, key) in self._releasable:
                self._holding.add((component, key))
        if switched:
            self.release_buffers(keep=component)

    def release_buffers(self, keep: str | None = None) -> int:
        """Frees the intermediate buffers of the large compiled models (`release_above`), except `keep`'s; the
        weights stay, and the next call allocates the buffers again (same output). Called on a component switch
        and after each job (engine.backend.release_memory), so a server's RSS comes back down after a large
        image. A model another thread is running is left alone (OpenVINO refuses: busy). Returns how many were
        released."""
        with self._lock:
            held = [(name, key) for name, key in self._holding if name != keep]
            released = 0
            for name, key in held:
                model = self._compiled.get(name, {}).get(key)
                try:
                    if model is not None:
                        model.release_memory()
                except RuntimeError as exc:  # "busy": an infer request of another thread is running on it
                    log.debug("openvino: %s buffers not released (%s)", name, exc)
                    continue
                self._holding.discard((name, key))
                released += model is not None
            self.releases += released
        return released

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

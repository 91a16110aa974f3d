"""Execution backends: run one bundle component (text encoder, UNet, VAE) on named NumPy inputs.

The pipeline only sees `ExecutionBackend`; ONNX Runtime (CPU, CUDA EP, TensorRT EP) is one implementation,
a native TensorRT backend slots in beside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.bundle import Bundle

log = logging.getLogger(__name__)

# Short names accepted on the command line / in configuration, mapped to ORT provider lists (best first).
PROVIDER_PRESETS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


class ExecutionBackend(Protocol):
    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def input_specs(self, component: str) -> list[TensorSpec]: ...

    def output_names(self, component: str) -> list[str]: ...

    @property
    def providers(self) -> list[str]: ...


# ORT graph optimisation levels by short name (SessionOptions.graph_optimization_level); ORT's default is "all".
OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "all": "ORT_ENABLE_ALL"}

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "float64"}


@dataclass(frozen=True)
class MemoryPolicy:
    """ORT's CPU allocator settings. With ORT's defaults (arena on, no shrinkage) every buffer of the largest
    request stays in the arena for the life of the session: RSS stayed at the high-water mark. Shrinking the
    arena at the end of every run hands those buffers back and also halved the peak at 512 px on the shapes
    model (777 → 398 MiB, arena shrinkage lets chunks reuse freed memory); without the arena and the memory
    pattern the UNet ran 3× slower at 512 px (14.4 s vs 4.3 s per call). Measured: benchmarks/RESULTS.md."""

    cpu_mem_arena: bool = True
    mem_pattern: bool = True
    # With the arena on: shrink it back to its initial size at the end of every run (ORT run option).
    arena_shrinkage: bool = True
    # ORT's `session.disable_prepacking`: without it, MatMul/Conv kernels copy their (memory-mapped) weights into
    # packed buffers at session creation, a second full copy of the weights in anonymous memory.
    disable_prepacking: bool = False


def provider_name(provider: str | tuple[str, dict]) -> str:
    """A provider entry as ORT takes it: a name, or (name, provider options)."""
    return provider if isinstance(provider, str) else provider[0]


def component_bytes(bundle: Bundle, component: str) -> int:
    """The bytes of a component's folder on disk (graph and weights)."""
    folder = bundle.component_path(component).parent
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class OrtBackend:
    """ONNX Runtime sessions for a bundle's components, created on first use. `providers` entries may carry
    provider options as ORT takes them, `(name, {option: value})`; `paths` runs a component from another graph
    file (a bundle variant, engine/trt_runtime.py)."""

    def __init__(self, bundle: Bundle, providers: str | Sequence[str | tuple[str, dict]] = "cpu",
                 intra_op_threads: int = 0, memory: MemoryPolicy = MemoryPolicy(),
                 paths: Mapping[str, Path] | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.bundle = bundle
        self.requested_providers = (
            PROVIDER_PRESETS[providers] if isinstance(providers, str) else list(providers)
        )
        self.intra_op_threads = intra_op_threads
        self.memory = memory
        self.paths = dict(paths or {})
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()
        self._run_options = None
        if memory.cpu_mem_arena and memory.arena_shrinkage:
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _new_session(self, component: str, initializers: dict[str, np.ndarray] | None = None,
                     optimization: str | None = None):
        options = self._ort.SessionOptions()
        if optimization is not None:
            options.graph_optimization_level = getattr(self._ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        options.enable_cpu_mem_arena = self.memory.cpu_mem_arena
        options.enable_mem_pattern = self.memory.mem_pattern
        if self.memory.disable_prepacking:
            options.add_session_config_entry("session.disable_prepacking", "1")
        if initializers:
            # Replaces external-data initializers before graph optimisation (data copied at load), so merged
            # LoRA weights reach every kernel, prepacked or not (engine/network_sessions.py).
            names = list(initializers)
            values = [self._ort.OrtValue.ortvalue_from_numpy(initializers[n]) for n in names]
            options.add_external_initializers(names, values)
        available = set(self._ort.get_available_providers())
        providers = [p for p in self.requested_providers if provider_name(p) in available] or ["CPUExecutionProvider"]
        base, _, variant = component.partition(":")
        path = Path(self.paths.get(base) or self.bundle.component_path(base))
        model: str | bytes = str(path)
        if variant:  # a graph derived from the component's (engine/tiling.py), its weights where they are
            from engine.tiling import EXTERNAL_DATA_FOLDER, variant_model

            model = variant_model(path, variant)
            options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(path.parent))
        session = self._ort.InferenceSession(model, sess_options=options, providers=providers)
        got = session.get_providers()
        if got[0] != provider_name(providers[0]):
            # onnxruntime-gpu without a usable GPU silently falls back to CPU: say so.
            log.warning("%s: asked for %s, ONNX Runtime gave %s", component, providers, got)
        return session

    def session(self, component: str):
        with self._lock:
            if component not in self._sessions:
                self._sessions[component] = self._new_session(component)
            return self._sessions[component]

    def session_with_initializers(self, component: str, initializers: dict[str, np.ndarray],
                                  optimization: str | None = None):
        """A new, uncached session of `component` with some external initializers replaced; `optimization`: an
        ORT graph optimisation level (OPTIMIZATION_LEVELS) other than the default (all)."""
        return self._new_session(component, initializers, optimization)

    def component_bytes(self, component: str) -> int:
        """The component's weight bytes on disk: what a second session of it costs in memory, roughly."""
        return component_bytes(self.bundle, component)

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_session(self.session(component), inputs)

    def run_session(self, session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, inputs, self._run_options)
        return dict(zip(names, values, strict=True))

    def input_specs(self, component: str) -> list[TensorSpec]:
        return [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(i.type, i.type))
                for i in self.session(component).get_inputs()]

    def output_names(self, component: str) -> list[str]:
        return [o.name for o in self.session(component).get_outputs()]

    @property
    def providers(self) -> list[str]:
        """Providers the sessions really got (not merely the available ones)."""
        session = self.session("unet")
        return list(session.get_providers())


BACKENDS = ("ort", "openvino", "auto")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class BackendChoice:
    """Which runtime runs the bundle (`--backend`, `--precision`). `auto` takes the fastest variant whose
    quality gate, recorded in the bundle's manifest, passed (engine/quality_gate.py: pick_variant); ONNX Runtime
    fp32 (the reference) when none is recorded. bf16 exists on OpenVINO only."""

    backend: str = "ort"
    precision: str = "fp32"
    threads: int = 0
    cache_dir: str | None = None  # OpenVINO's compiled-model cache (CACHE_DIR); None: no cache

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.backend == "ort" and self.precision != "fp32":
            raise ValueError("ONNX Runtime runs fp32 bundles in fp32; --precision bf16 needs --backend openvino")


def create_backend(bundle: Bundle, providers: str | Sequence[str] = "cpu",
                   choice: BackendChoice = BackendChoice()) -> ExecutionBackend:
    """The backend `choice` names for `bundle`; OpenVINO is imported only when chosen."""
    if choice.backend == "auto":
        from engine.quality_gate import REFERENCE, pick_variant

        # The gate measures CPU variants: with GPU providers asked for, auto is ONNX Runtime on them (their own
        # variants are chosen below, engine/trt_runtime.py).
        backend, precision = pick_variant(bundle) if _cpu_only(providers) else REFERENCE.split("-")
        log.info("backend auto: %s %s", backend, precision)
        choice = BackendChoice(backend, precision, choice.threads, choice.cache_dir)
    if choice.backend == "openvino":
        from engine.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(bundle, choice.precision, choice.threads, choice.cache_dir)
    if providers == "tensorrt":  # UNet engines built ahead of time, CUDA EP for the rest (engine/trt_runtime.py)
        from engine.trt_runtime import create_tensorrt_backend

        return create_tensorrt_backend(bundle, choice)
    if providers == "cuda":  # the bundle's best passing CUDA variant, the UNet through IO binding
        from engine.trt_runtime import create_cuda_backend

        return create_cuda_backend(bundle, choice)
    return OrtBackend(bundle, providers, intra_op_threads=choice.threads)


def _cpu_only(providers: str | Sequence[str | tuple[str, dict]]) -> bool:
    names = PROVIDER_PRESETS[providers] if isinstance(providers, str) else [provider_name(p) for p in providers]
    return all(name == "CPUExecutionProvider" for name in names)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


# Backends whose compiled models keep large intermediate buffers between calls (OpenVINO); release_memory()
# asks each to free them after a job. Weak: a backend that is dropped leaves the set by itself.
_BUFFER_HOLDERS: weakref.WeakSet = weakref.WeakSet()


def hold_buffers(holder) -> None:
    """Registers `holder` (with a `release_buffers()` method) to be called by `release_memory()`."""
    _BUFFER_HOLDERS.add(holder)


def release_memory() -> bool:
    """Hand freed heap memory back to the OS after a job (glibc's `malloc_trim(0)`; NumPy's and ORT's
    smaller buffers otherwise stay in malloc's free lists and in RSS), after the registered backends released
    their large buffers (`hold_buffers`). False where there is no glibc."""
    for holder in list(_BUFFER_HOLDERS):
        holder.release_buffers()
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))

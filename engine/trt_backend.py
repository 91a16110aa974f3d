"""A native TensorRT UNet engine (the `tensorrt` Python API, imported lazily) and LoRA by refit.

ORT's TensorRT EP builds and runs engines but does not refit them, so LoRA on an engine needs the engine itself:
built with the REFIT flag from the same graph, its weights named after the ONNX initializers (TensorRT's ONNX
parser names them so), and refitted with `tensorrt.Refitter` from the merged weights engine/lora.py computes with
the bundle's `lora_map.json`. Always from base weights: a weight refitted for the previous LoRA set and not in the
new one gets its base value back, so refits never accumulate (NVIDIA's A1111 extension reloads the engine for the
same reason; TensorRT issue #3628). Device buffers are ONNX Runtime CUDA OrtValues (no extra CUDA binding); the
engine runs on the legacy default stream, which ORT's synchronous copies wait for.

Nothing here has run on a GPU yet (docs/gpu.md); `refit_weights`, the part that decides what to refit, is pure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.io_binding import c_order
from engine.trt_cache import write_record
from engine.trt_profiles import TrtBuildOptions, UNetProfile

log = logging.getLogger(__name__)


def refit_weights(previous: set[str], merged: Mapping[str, np.ndarray], base: Callable[[str], np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """The weights to set for switching from the set that changed `previous` to the set whose merged weights are
    `merged` ({initializer: weight}): every merged weight, and the base value of each previously changed weight
    the new set does not change."""
    weights = dict(merged)
    for name in sorted(previous - set(merged)):
        weights[name] = base(name)
    return weights


@dataclass(frozen=True)
class WeightSet:
    """The UNet weights a set of LoRAs asks for: `key` names the set (engine/network_sessions.py's cache key);
    `merged()` computes {initializer: merged weight in stored layout} (engine/lora.py merged_weights; seconds),
    called only when an engine switches to the set, and not kept: an engine holds the weights, not this."""

    key: Hashable
    merged: Callable[[], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class RefitPlan:
    key: Hashable | None
    arrays: dict[str, np.ndarray]  # what to hand the refitter
    changed: frozenset[str]  # the weights that differ from base once it is done


_UNKNOWN = object()  # the key of an engine whose last refit failed half-way: the next switch resets everything


class RefitState:
    """Which weight set an engine holds (None: the base model) and what to set to switch to another, always from
    base weights (`refit_weights`). No TensorRT here: NativeTrtEngine applies the arrays with its refitter."""

    def __init__(self, base: Callable[[str], np.ndarray] | None):
        self.base = base
        self.key: Hashable | None = None
        self.changed: frozenset[str] = frozenset()

    def plan(self, weights: WeightSet | None) -> RefitPlan | None:
        """None when the engine already holds `weights` (None: the base model)."""
        key = None if weights is None else weights.key
        if key == self.key and self.key is not _UNKNOWN:
            return None
        if self.base is None:
            raise RuntimeError("this engine's bundle has no LoRA weight map (lora_map.json): it cannot be refitted")
        merged = {} if weights is None else dict(weights.merged())
        return RefitPlan(key, refit_weights(set(self.changed), merged, self.base), frozenset(merged))

    def switch(self, weights: WeightSet | None, apply: Callable[[dict[str, np.ndarray]], object]) -> bool:
        """Make the engine hold `weights`: `apply(arrays)` sets them (the refit) unless it already does; True when
        it refitted. A failed `apply` may have set some: every weight it or the previous set touched is then
        reset on the next switch, whatever its key."""
        plan = self.plan(weights)
        if plan is None:
            return False
        try:
            apply(plan.arrays)
        except BaseException:
            self.key, self.changed = _UNKNOWN, self.changed | frozenset(plan.arrays)
            raise
        self.key, self.changed = plan.key, plan.changed
        return True


def refit_arrays(weights: Mapping[str, np.ndarray], dtype_of: Callable[[str, np.dtype], np.dtype]
                 ) -> dict[str, np.ndarray]:
    """The arrays handed to `Refitter.set_named_weights`: C-contiguous (trt.Weights reads the raw buffer, without
    copying) in the dtype the engine stores each weight in, in the ONNX initializer's own shape and layout
    (TensorRT's ONNX parser names and shapes an engine's weights after the initializers)."""
    return {name: np.ascontiguousarray(value, dtype=dtype_of(name, value.dtype)) for name, value in weights.items()}


def base_weights(bundle: Path, lora_map, component: str = "unet") -> Callable[[str], np.ndarray]:
    """initializer name → its base value in stored layout, read from the bundle at the offsets the map records."""
    targets = {t.initializer: t for t in lora_map.targets.values() if t.component == component}

    def read(name: str) -> np.ndarray:
        target = targets[name]
        return np.array(target.stored(Path(bundle)))  # a copy: the refitter keeps the buffer while it runs

    return read


def _trt():
    import tensorrt

    return tensorrt


def _logger():
    trt = _trt()
    return trt.Logger(trt.Logger.WARNING)


def build_native_engine(onnx_path: Path, profile: UNetProfile, out: Path, build: TrtBuildOptions = TrtBuildOptions(),
                        refittable: bool = True, timing_cache: Path | None = None) -> Path:
    """A serialized engine of `onnx_path` for `profile` (fp16 unless told, REFIT for LoRA), written to `out`."""
    trt = _trt()
    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser refused {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if build.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if build.max_workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.max_workspace_bytes)
    if build.builder_optimization_level is not None:
        config.builder_optimization_level = build.builder_optimization_level
    trt_profile = builder.create_optimization_profile()
    for name, r in profile.inputs:
        trt_profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(trt_profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {onnx_path} for profile {profile.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    if cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


class NativeTrtEngine:
    """One deserialized engine (one profile) as an `ExecutionBackend` for the UNet. `base` (initializer → base
    weight) makes it refittable for LoRA sets (`run_with`); a plain `run` is the base model, refitting back first
    if a set was on. A lock makes switch + execute one step: one execution context, one set of weights."""

    def __init__(self, path: Path, device_id: int = 0, base: Callable[[str], np.ndarray] | None = None):
        import onnxruntime as ort

        trt = _trt()
        self._ort = ort
        self._trt = trt
        self.device_id = device_id
        self.logger = _logger()
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize it (another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, object] = {}
        self._refitter = None
        self.weights = RefitState(base)
        self.refits = 0
        self._lock = threading.Lock()

    def _buffer(self, name: str, shape: tuple[int, ...]):
        buffer = self._buffers.get(name)
        if buffer is None or tuple(buffer.shape()) != tuple(shape):
            buffer = self._ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtypes[name], "cuda", self.device_id)
            self._buffers[name] = buffer
        return buffer

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_with(inputs, None)

    def run_with(self, inputs: dict[str, np.ndarray], weights: WeightSet | None) -> dict[str, np.ndarray]:
        """A UNet call with `weights` (a LoRA set; None: the base model) in the engine, refitted first if needed."""
        with self._lock:
            self.refits += self.weights.switch(weights, self.set_weights)
            return self._execute(inputs)

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.inputs:
            array = c_order(inputs[name], self.dtypes[name])
            buffer = self._buffer(name, array.shape)
            buffer.update_inplace(array)
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, buffer.data_ptr())
        for name in self.outputs:
            buffer = self._buffer(name, tuple(self.context.get_tensor_shape(name)))
            self.context.set_tensor_address(name, buffer.data_ptr())
        if not self.context.execute_async_v3(0):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        # OrtValue.numpy() copies with a synchronous cudaMemcpy, which waits for the legacy default stream.
        return {name: self._buffers[name].numpy() for name in self.outputs}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> int:
        """Refit the engine with `weights` ({initializer: value}); the number of weights set."""
        trt = self._trt
        if self._refitter is None:
            self._refitter = trt.Refitter(self.engine, self.logger)
            self._refittable = set(self._refitter.get_all_weights())
        missing = sorted(set(weights) - self._refittable)
        if missing:
            raise RuntimeError(f"{len(missing)} LoRA weights are not refittable in this engine (built without REFIT, "
                               f"or from a graph that renamed them), e.g. {missing[0]}")
        arrays = refit_arrays(weights, self._prototype_dtype)  # kept alive until refit_cuda_engine returns
        for name, array in arrays.items():
            if not self._refitter.set_named_weights(name, trt.Weights(array)):
                raise RuntimeError(f"TensorRT refused the weights of {name} {array.shape} {array.dtype}")
        if not self._refitter.refit_cuda_engine():
            raise RuntimeError(f"refit failed; missing: {self._refitter.get_missing_weights()}")
        return len(arrays)

    def _prototype_dtype(self, name: str, fallback: np.dtype) -> np.dtype:
        prototype = getattr(self._refitter, "get_weights_prototype", None)  # TensorRT ≥ 10
        if prototype is None:
            return fallback
        return np.dtype(self._trt.nptype(prototype(name).dtype))


NATIVE_ENGINE = "unet.engine"  # `*.engine`: what engine/trt_cache.py: is_built looks for


def build_planned_native(bundle, engine, timing_dir: Path, build: TrtBuildOptions = TrtBuildOptions()) -> float:
    """A refittable native engine for a `PlannedEngine` (plan_engines(..., kind="unet-native")), record last."""
    import time

    from engine.trt_runtime import TRT_VARIANT, variant_graph

    start = time.perf_counter()
    _, graph = variant_graph(bundle, "unet", (TRT_VARIANT,))
    timing_dir.mkdir(parents=True, exist_ok=True)
    build_native_engine(graph, engine.profile, engine.directory / NATIVE_ENGINE, build,
                        timing_cache=timing_dir / "native.timing")
    seconds = time.perf_counter() - start
    write_record(engine.directory, engine.key, seconds)
    return seconds


def native_opener(bundle_path: Path) -> Callable[[object], NativeTrtEngine]:
    """An `EngineOpener` for engine/trt_runtime.py: TensorrtBackend over native engines, refittable with the
    bundle's base weights when it has a LoRA weight map."""
    from engine.lora import LoraMap

    lora_map = LoraMap.load(bundle_path)
    base = base_weights(bundle_path, lora_map) if lora_map is not None else None

    def open_native_engine(engine) -> NativeTrtEngine:
        return NativeTrtEngine(engine.directory / NATIVE_ENGINE, base=base)

    return open_native_engine

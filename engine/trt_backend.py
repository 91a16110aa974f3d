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
from collections.abc import Callable, Mapping
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
    """One deserialized engine (one profile) as an `ExecutionBackend` for the UNet."""

    def __init__(self, path: Path, device_id: int = 0):
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
        self.refitted: set[str] = set()

    def _buffer(self, name: str, shape: tuple[int, ...]):
        buffer = self._buffers.get(name)
        if buffer is None or tuple(buffer.shape()) != tuple(shape):
            buffer = self._ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtypes[name], "cuda", self.device_id)
            self._buffers[name] = buffer
        return buffer

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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

    def refit(self, merged: Mapping[str, np.ndarray], base: Callable[[str], np.ndarray]) -> int:
        """The engine's weights for a LoRA set (`merged`: {initializer: weight}, empty = the base model), always
        from base weights; the number of weights set."""
        trt = self._trt
        if self._refitter is None:
            self._refitter = trt.Refitter(self.engine, self.logger)
            self._refittable = set(self._refitter.get_all_weights())
        missing = sorted(set(merged) - self._refittable)
        if missing:
            raise RuntimeError(f"{len(missing)} LoRA weights are not refittable in this engine (built without REFIT, "
                               f"or from a graph that renamed them), e.g. {missing[0]}")
        weights = refit_weights(self.refitted, merged, base)
        keep = []  # trt.Weights does not copy: the arrays must live until refit_cuda_engine returns
        for name, value in weights.items():
            dtype = self._prototype_dtype(name, value.dtype)
            array = np.ascontiguousarray(value, dtype=dtype)
            keep.append(array)
            if not self._refitter.set_named_weights(name, trt.Weights(array)):
                raise RuntimeError(f"TensorRT refused the weights of {name} {array.shape} {array.dtype}")
        if not self._refitter.refit_cuda_engine():
            raise RuntimeError(f"refit failed; missing: {self._refitter.get_missing_weights()}")
        self.refitted = set(merged)
        return len(keep)

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


def open_native_engine(engine) -> NativeTrtEngine:
    """An `EngineOpener` for engine/trt_runtime.py: TensorrtBackend over native engines."""
    return NativeTrtEngine(engine.directory / NATIVE_ENGINE)

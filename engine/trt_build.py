"""Build the UNet's TensorRT engines ahead of time (`sdedge build-engines`), one per profile.

The build is ORT's own: a TensorRT EP session with the profile's explicit shapes and the engine cache on,
then one UNet call at the profile's opt shape so the EP has built and saved the engine whatever its version
does at session creation. The record (engine/trt_cache.py: ENGINE_RECORD) is written last, so an interrupted
build is never mistaken for an engine by the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.backend import OrtBackend
from engine.bundle import Bundle
from engine.trt_cache import GpuFacts, is_built, write_record
from engine.trt_profiles import (
    TrtBuildOptions,
    UNetProfile,
    UNetSignature,
    a1111_profiles,
    trt_provider_options,
)
from engine.trt_runtime import (
    TRT_VARIANT,
    PlannedEngine,
    graph_specs,
    plan_engines,
    timing_cache_dir,
    variant_graph,
)


@dataclass(frozen=True)
class BuildResult:
    profile: str
    directory: Path
    seconds: float
    skipped: bool  # already built


def opt_inputs(session, profile: UNetProfile) -> dict[str, np.ndarray]:
    """Zeros at the profile's opt shape for every UNet input (inputs without a range, e.g. optimum's scalar
    timestep, at their static shape)."""
    ranges = profile.ranges
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    inputs = {}
    for spec in session.get_inputs():
        shape = ranges[spec.name].opt if spec.name in ranges else tuple(d for d in spec.shape if isinstance(d, int))
        inputs[spec.name] = np.zeros(shape, dtype=dtypes.get(spec.type, np.float32))
    return inputs


def unet_signature(bundle: Bundle) -> UNetSignature:
    """The UNet's input signature (read without loading a second UNet: engine/trt_runtime.py `graph_specs`)."""
    return UNetSignature.from_specs(graph_specs(bundle.component_path("unet"))[0], bundle.manifest.vae_scale_factor)


def build_engine(bundle: Bundle, engine: PlannedEngine, timing_dir: Path, build: TrtBuildOptions) -> float:
    """Builds one engine into `engine.directory`; seconds taken."""
    start = time.perf_counter()
    engine.directory.mkdir(parents=True, exist_ok=True)
    timing_dir.mkdir(parents=True, exist_ok=True)
    _, graph = variant_graph(bundle, "unet", (TRT_VARIANT,))
    options = trt_provider_options(engine.profile, str(engine.directory), str(timing_dir), build)
    backend = OrtBackend(bundle, [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"],
                         paths={"unet": graph})
    session = backend.session("unet")
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        raise RuntimeError(f"ONNX Runtime gave {session.get_providers()}, not the TensorRT EP: no engine built")
    backend.run("unet", opt_inputs(session, engine.profile))
    if not any(engine.directory.glob("*.engine")):
        raise RuntimeError(f"the TensorRT EP wrote no engine into {engine.directory}")
    seconds = time.perf_counter() - start
    write_record(engine.directory, engine.key, seconds)
    return seconds


def build_engines(bundle: Bundle, root: Path, gpu: GpuFacts, profiles: Sequence[UNetProfile] | None = None,
                  build: TrtBuildOptions = TrtBuildOptions(), force: bool = False,
                  on_start: Callable[[PlannedEngine], None] = lambda e: None,
                  on_done: Callable[[BuildResult], None] = lambda r: None, native: bool = False) -> list[BuildResult]:
    """Every profile's engine (the A1111 set by default), skipping those already built unless `force`; `native`:
    refittable engines through the TensorRT API (engine/trt_backend.py) instead of ORT's TensorRT EP."""
    import onnxruntime as ort

    builder = build_engine
    if native:
        from engine.trt_backend import build_planned_native as builder

    if profiles is None:
        profiles = a1111_profiles(unet_signature(bundle), bundle.manifest.architecture)
    timing = timing_cache_dir(root, gpu)
    results = []
    for engine in plan_engines(bundle, root, gpu, ort.__version__, profiles, build,
                               "unet-native" if native else "unet"):
        on_start(engine)
        if is_built(engine.directory) and not force:
            result = BuildResult(engine.profile.name, engine.directory, 0.0, True)
        else:
            result = BuildResult(engine.profile.name, engine.directory, builder(bundle, engine, timing, build), False)
        results.append(result)
        on_done(result)
    return results

"""`--providers tensorrt`: the UNet on TensorRT engines built ahead of time, everything else on the CUDA EP.

ONNX Runtime's TensorRT EP builds an engine lazily, inside the first `run()` whose shape it has no engine for:
minutes of a request's time (NVIDIA's A1111 extension's most reported complaint is a request failing or stalling
for want of an engine). Here an engine is only used when `sdedge build-engines` finished it (engine/trt_cache.py:
`is_built`); a UNet call outside every built profile runs on the CUDA EP session of the bundle's best passing
CUDA variant, and the log says which and why, once per shape. Text encoders and the VAE always run on the CUDA EP
(as in the A1111 extension, only the UNet is worth an engine: it runs steps × CFG times per image).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.backend import BackendChoice, ExecutionBackend, OrtBackend, TensorSpec
from engine.bundle import Bundle
from engine.trt_cache import EngineKey, GpuFacts, engine_dir, is_built, model_fingerprint, probe_gpu
from engine.trt_profiles import (
    TrtBuildOptions,
    UNetProfile,
    UNetSignature,
    a1111_profiles,
    select_profile,
    trt_provider_options,
)

log = logging.getLogger(__name__)

TRT_VARIANT = "trt-ready"  # export/variants (gpu-export): constant-folded, shape-inferred, TensorRT-ready graph
CUDA_VARIANTS = ("ort-cuda", "fp16")  # best first: fused for the CUDA EP, then plain fp16; else the portable graph
PORTABLE = "portable"
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")
FALLBACK = "cuda-fallback"


def variant_graph(bundle: Bundle, component: str, variants: Sequence[str]) -> tuple[str, Path]:
    """The first of `variants` whose validation gate passed and that has `component`, else the portable graph.
    A variant whose gate did not pass is never used (engine/variants.py records)."""
    for variant in variants:
        if bundle.variant_passed(variant):
            path = bundle.variant_path(component, variant)
            if path is not None:
                return variant, Path(path)
    return PORTABLE, bundle.component_path(component)


def cuda_paths(bundle: Bundle) -> dict[str, Path]:
    return {c: variant_graph(bundle, c, CUDA_VARIANTS)[1] for c in COMPONENTS if bundle.has_component(c)}


@dataclass(frozen=True)
class PlannedEngine:
    profile: UNetProfile
    key: EngineKey
    directory: Path


def plan_engines(bundle: Bundle, root: Path, gpu: GpuFacts, ort_version: str, profiles: Sequence[UNetProfile],
                 build: TrtBuildOptions = TrtBuildOptions(), kind: str = "unet") -> list[PlannedEngine]:
    """One engine per profile, keyed (engine/trt_cache.py) by this GPU and the UNet graph it is built from;
    `kind` "unet" (ORT's TensorRT EP cache) or "unet-native" (engine/trt_backend.py's refittable plan file)."""
    variant, graph = variant_graph(bundle, "unet", (TRT_VARIANT,))
    model_hash = f"{bundle.manifest.source_sha256 or ''}:{model_fingerprint(graph)}"
    planned = []
    for profile in profiles:
        key = EngineKey(kind, gpu, ort_version, model_hash, variant, profile, build)
        planned.append(PlannedEngine(profile, key, engine_dir(root, key)))
    return planned


def default_engine_root(bundle: Bundle, choice: BackendChoice | None = None) -> Path:
    """`--backend-cache-dir` when given (shared with OpenVINO's compiled-model cache), else `<bundle>/engines`."""
    if choice is not None and choice.cache_dir:
        return Path(choice.cache_dir) / "tensorrt"
    return bundle.path / "engines"


EngineOpener = Callable[[PlannedEngine], ExecutionBackend]


def graph_specs(path: Path) -> tuple[list[TensorSpec], list[str]]:
    """A graph's inputs and output names from a CPU session without graph optimisation or prepacking: the
    weights stay memory-mapped, so reading the UNet's signature does not load a second UNet."""
    import onnxruntime as ort

    from engine.backend import _ORT_DTYPES

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    specs = [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(i.type, i.type)) for i in session.get_inputs()]
    return specs, [o.name for o in session.get_outputs()]


class TensorrtBackend:
    """UNet calls inside a built profile run on that profile's engine; all other calls on `fallback` (the CUDA
    EP). `calls` counts where UNet calls ran (profile name or "cuda-fallback")."""

    def __init__(self, fallback: ExecutionBackend, engines: Sequence[PlannedEngine], open_engine: EngineOpener,
                 unet_graph: Path | None = None, refittable: bool = False):
        self.fallback = fallback
        # Native engines (engine/trt_backend.py) take a LoRA set's UNet weights by refit (`run_unet_with`); ORT's
        # TensorRT EP engines cannot, and LoRA UNet calls then run on merged CUDA EP sessions.
        self.refits_unet = refittable
        # The graph the engines are built from: the UNet's signature is read from it (not from the CUDA EP's session)
        self.unet_graph = unet_graph
        self._specs: tuple[list[TensorSpec], list[str]] | None = None
        self._fallback_dtypes: dict[str, str] | None = None
        self.engines = list(engines)
        self.open_engine = open_engine
        self.calls: Counter[str] = Counter()
        self._opened: dict[str, ExecutionBackend | None] = {}
        self._logged: set[tuple] = set()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Re-read which engines are built (after `sdedge build-engines` ran beside a live server)."""
        self.built = [e for e in self.engines if is_built(e.directory)]
        self._by_profile = {e.profile.name: e for e in self.built}

    def __getattr__(self, name: str):
        # session_with_initializers, component_bytes, ...: LoRA sessions (engine/network_sessions.py) run on the
        # CUDA EP: the text encoder always, the UNet unless native engines take the set by refit.
        return getattr(self.fallback, name)

    def input_specs(self, component: str) -> list[TensorSpec]:
        if component == "unet" and self.unet_graph is not None:
            return self._unet_specs()[0]
        return self.fallback.input_specs(component)

    def output_names(self, component: str) -> list[str]:
        if component == "unet" and self.unet_graph is not None:
            return self._unet_specs()[1]
        return self.fallback.output_names(component)

    def _unet_specs(self) -> tuple[list[TensorSpec], list[str]]:
        # Not the CUDA EP's UNet session: with every call on an engine, that session (GBs on the GPU) never loads.
        if self._specs is None:
            self._specs = graph_specs(self.unet_graph)
        return self._specs

    @property
    def providers(self) -> list[str]:
        """TensorRT first when at least one engine is built (its session opens on the first call it fits)."""
        if not self.built:
            return list(self.fallback.providers)
        session = getattr(self.fallback, "session", None)
        # The CUDA EP's providers as the VAE decoder's session got them: asking the UNet's would load that session
        # (GBs on the GPU) though every call may run on an engine.
        base = session("vae_decoder").get_providers() if session is not None else self.fallback.providers
        return ["TensorrtExecutionProvider", *base]

    def engine_for(self, shapes: Mapping[str, Sequence[int]]) -> PlannedEngine | None:
        profile = select_profile([e.profile for e in self.built], shapes)
        if profile is not None:
            return self._by_profile[profile.name]
        self._log_fallback(shapes)
        return None

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if component != "unet":
            return self.fallback.run(component, inputs)
        engine = self.engine_for({k: v.shape for k, v in inputs.items()})
        backend = self._open(engine) if engine is not None else None
        if backend is None:
            self.calls[FALLBACK] += 1
            return self.fallback.run(component, self._as_fallback_takes(inputs))
        self.calls[engine.profile.name] += 1
        return backend.run(component, inputs)

    def run_unet_with(self, inputs: dict[str, np.ndarray], weights) -> dict[str, np.ndarray] | None:
        """A UNet call with a LoRA set's weights (engine/trt_backend.py WeightSet) on the refittable engine of its
        profile; None when no engine takes it (the caller runs it on its merged CUDA EP session)."""
        engine = self.engine_for({k: v.shape for k, v in inputs.items()})
        backend = self._open(engine) if engine is not None else None
        run_with = getattr(backend, "run_with", None)
        if run_with is None:
            self.calls[FALLBACK] += 1
            return None
        self.calls[engine.profile.name] += 1
        return run_with(inputs, weights)

    def _as_fallback_takes(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The UNet wrapper casts to the dtypes this backend reports (the engines' graph); the CUDA EP's variant
        may take others (an fp16 variant with fp16 inputs)."""
        if self.unet_graph is None:
            return inputs
        if self._fallback_dtypes is None:
            self._fallback_dtypes = {s.name: s.dtype for s in self.fallback.input_specs("unet")}
        return {k: v.astype(self._fallback_dtypes.get(k, v.dtype), copy=False) for k, v in inputs.items()}

    def _open(self, engine: PlannedEngine) -> ExecutionBackend | None:
        name = engine.profile.name
        with self._lock:
            if name not in self._opened:
                try:
                    self._opened[name] = self.open_engine(engine)
                except Exception as exc:  # a stale or foreign engine must not fail requests the CUDA EP can run
                    log.error("TensorRT engine %s (%s) did not open, its calls run on the CUDA EP: %s",
                              name, engine.directory, exc)
                    self._opened[name] = None
            return self._opened[name]

    def _log_fallback(self, shapes: Mapping[str, Sequence[int]]) -> None:
        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        if key in self._logged:
            return
        self._logged.add(key)
        shown = ", ".join(f"{k} {list(v)}" for k, v in shapes.items() if k in ("sample", "encoder_hidden_states"))
        unbuilt = [e.profile.name for e in self.engines if e not in self.built and e.profile.contains(shapes)]
        if unbuilt:
            why = f"its profile {unbuilt[0]} has no built engine (run `sdedge build-engines`)"
        else:
            why = f"it is outside every TensorRT profile ({', '.join(e.profile.name for e in self.engines)})"
        log.warning("UNet call %s runs on the CUDA EP: %s", shown, why)


def open_ort_trt_engine(bundle: Bundle, build: TrtBuildOptions, timing_dir: Path, io_binding: bool = True
                        ) -> EngineOpener:
    """Opens a built engine as an ORT session with the TensorRT EP, from the cache only: the same provider
    options it was built with (ORT's engine cache matches on them), and refused if ORT did not give the session
    the TensorRT EP."""
    _, graph = variant_graph(bundle, "unet", (TRT_VARIANT,))

    def opener(engine: PlannedEngine) -> ExecutionBackend:
        options = trt_provider_options(engine.profile, str(engine.directory), str(timing_dir), build)
        backend = OrtBackend(bundle, [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"],
                             paths={"unet": graph})
        got = backend.session("unet").get_providers()
        if got[0] != "TensorrtExecutionProvider":
            raise RuntimeError(f"ONNX Runtime gave {got}, not the TensorRT EP")
        if io_binding:
            from engine.io_binding import IoBindingBackend

            return IoBindingBackend(backend, cuda_graph=build.cuda_graph)
        return backend

    return opener


def timing_cache_dir(root: Path, gpu: GpuFacts) -> Path:
    """TensorRT's timing cache is per GPU architecture and TensorRT version, shared by the profiles' builds."""
    return Path(root) / f"timing-sm{gpu.compute_capability.replace('.', '')}-trt{gpu.tensorrt_version}"


def create_cuda_backend(bundle: Bundle, choice: BackendChoice = BackendChoice(), io_binding: bool = True,
                        cuda_graph: bool = False) -> ExecutionBackend:
    """The CUDA EP on the bundle's best passing CUDA variant per component, the UNet through IO binding."""
    cuda_options = {"enable_cuda_graph": "1"} if cuda_graph else {}
    backend = OrtBackend(bundle, [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"],
                         intra_op_threads=choice.threads, paths=cuda_paths(bundle))
    if not io_binding:
        return backend
    from engine.io_binding import IoBindingBackend

    return IoBindingBackend(backend, cuda_graph=cuda_graph)


def prefer_native(ort_engines: Sequence[PlannedEngine], native: Sequence[PlannedEngine]) -> bool:
    """Native (refittable) engines when `sdedge build-engines --native` built at least as many profiles as ORT's
    EP has, and the tensorrt package imports."""
    built_native = sum(is_built(e.directory) for e in native)
    if not built_native or built_native < sum(is_built(e.directory) for e in ort_engines):
        return False
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def create_tensorrt_backend(bundle: Bundle, choice: BackendChoice = BackendChoice(),
                            build: TrtBuildOptions = TrtBuildOptions(), gpu: GpuFacts | None = None,
                            engine_root: Path | None = None) -> ExecutionBackend:
    """TensorrtBackend over the engines built for this GPU; without an NVIDIA GPU with TensorRT, the plain ORT
    preset (which reports the providers its sessions really got and warns)."""
    import onnxruntime as ort

    gpu = gpu or probe_gpu()
    if gpu is None or "TensorrtExecutionProvider" not in ort.get_available_providers():
        log.warning("--providers tensorrt: no NVIDIA GPU with TensorRT and onnxruntime-gpu found; plain ONNX Runtime")
        return OrtBackend(bundle, "tensorrt", intra_op_threads=choice.threads)
    fallback = create_cuda_backend(bundle, choice)
    root = engine_root or default_engine_root(bundle, choice)
    unet_graph = variant_graph(bundle, "unet", (TRT_VARIANT,))[1]
    profiles = a1111_profiles(UNetSignature.from_specs(graph_specs(unet_graph)[0], bundle.manifest.vae_scale_factor),
                              bundle.manifest.architecture)
    engines = plan_engines(bundle, root, gpu, ort.__version__, profiles, build)
    opener = open_ort_trt_engine(bundle, build, timing_cache_dir(root, gpu))
    native = plan_engines(bundle, root, gpu, ort.__version__, profiles, build, "unet-native")
    refittable = prefer_native(engines, native)
    if refittable:
        from engine.trt_backend import native_opener

        engines, opener = native, native_opener(bundle.path)
    backend = TensorrtBackend(fallback, engines, opener, unet_graph, refittable)
    log.info("TensorRT: %d of %d UNet engines built in %s (%s, sm %s, TensorRT %s)", len(backend.built),
             len(engines), root, gpu.name, gpu.compute_capability, gpu.tensorrt_version)
    return backend

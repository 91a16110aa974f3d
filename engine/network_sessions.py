"""Sessions over merged LoRA weights, cached per set of networks within a memory budget.

A set of networks changes some initializers of the UNet and text encoder. Each changed component gets a new ONNX
Runtime session whose external initializers are replaced before graph optimisation
(SessionOptions.add_external_initializers: exact for MatMul, transposed and Conv weights at every optimisation
level; `add_initializer` runs after optimisation and is silently lost on Conv weights, so it is not used).
Components the set does not touch keep the base sessions. Sessions of recently used sets stay cached, the least
recently used evicted first when their estimated memory exceeds the budget.

On native TensorRT engines (`--providers tensorrt` after `sdedge build-engines --native`) the UNet takes the set by
refit instead (engine/trt_backend.py): no merged UNet session, each engine refitted from base weights when a call
of another set reaches it; a UNet call outside every engine's profile gets its merged CUDA EP session on demand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from engine.backend import ExecutionBackend, TensorSpec

log = logging.getLogger(__name__)


# ORT graph optimisation level of merged-weight sessions (engine.backend.OPTIMIZATION_LEVELS; None: ORT's default,
# "all"). Measured on full-size SD 1.5 (benchmarks/RESULTS.md, LoRA section): at "extended" the first switch took
# 0.63x the base sessions' creation against 1.71x at "all" (what "all" adds, the layout passes, costs the time), and the
# UNet call of the LoRA session was the same at both levels (11.31 vs 11.38 s).
LORA_OPTIMIZATION: str | None = "extended"


@dataclass
class _Entry:
    sessions: dict[str, object]
    cost: int
    build: object  # () → {component: {initializer: merged array}}, for variant sessions made later




class NetworkBackend:
    """An ExecutionBackend that runs some components on their own (merged) sessions, the rest on the base."""

    def __init__(self, base, sessions: dict[str, object], build=None, optimization: str | None = None):
        self.base = base
        self.sessions = sessions
        self._build = build
        self._optimization = optimization

    def _session(self, component: str):
        session = self.sessions.get(component)
        name, _, variant = component.partition(":")
        if session is None and variant and name in self.sessions and self._build is not None:
            # A derived graph of a merged component (`unet:circular` for tiling): the same merged weights,
            # merged again (seconds) rather than kept in memory; the session joins this set's cache entry.
            session = self.sessions[component] = self.base.session_with_initializers(
                component, self._build([name])[name], self._optimization)
        return session

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(component)
        if session is None:
            return self.base.run(component, inputs)
        return self.base.run_session(session, inputs)

    def input_specs(self, component: str) -> list[TensorSpec]:
        return self.base.input_specs(component)

    def output_names(self, component: str) -> list[str]:
        return self.base.output_names(component)

    @property
    def providers(self) -> list[str]:
        return self.base.providers

    def __getattr__(self, name: str):
        return getattr(self.base, name)


class RefitNetworkBackend(NetworkBackend):
    """A set's backend over refittable TensorRT engines: UNet calls on the engine of their profile with the set's
    weights (`run_unet_with`), any other UNet call, and derived UNet graphs (`unet:circular`), on merged sessions
    made on first need; the other components as NetworkBackend runs them."""

    def __init__(self, base, sessions: dict[str, object], build, optimization: str | None, key: Hashable,
                 prepared: dict[str, np.ndarray] | None = None):
        from engine.trt_backend import WeightSet

        super().__init__(base, sessions, build, optimization)
        self._prepared = prepared
        self.weights = WeightSet(key, self._merged_unet)

    def _merged_unet(self) -> dict[str, np.ndarray]:
        # The merge done when the set was first asked for (it had to be: a file that cannot be merged is an
        # error of the request, before sampling) serves the first refit; later refits merge again.
        prepared, self._prepared = self._prepared, None
        return prepared if prepared is not None else self._build(["unet"])["unet"]

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if component == "unet":
            outputs = self.base.run_unet_with(inputs, self.weights)
            if outputs is not None:
                return outputs
        return super().run(component, inputs)

    def _session(self, component: str):
        if component.partition(":")[0] == "unet" and component not in self.sessions:
            self.sessions[component] = self.base.session_with_initializers(
                component, self._build(["unet"])["unet"], self._optimization)
        return super()._session(component)


class NetworkSessions:
    """LRU of per-set sessions over one base backend (an OrtBackend, or an OpenVinoBackend whose "sessions" are
    merged models: engine/openvino_networks.py)."""

    def __init__(self, base, budget_bytes: int, optimization: str | None = None):
        self.base = base
        self.budget_bytes = budget_bytes
        self.optimization = optimization
        self._cache: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.last_build_seconds = 0.0

    @property
    def refits_unet(self) -> bool:
        """The base backend takes a set's UNet weights by refitting its engines (native TensorRT)."""
        return bool(getattr(self.base, "refits_unet", False))

    def _wrap(self, key: Hashable, sessions: dict[str, object], build, components: Collection[str],
              prepared: dict[str, np.ndarray] | None = None):
        if self.refits_unet and "unet" in components:
            return RefitNetworkBackend(self.base, sessions, build, self.optimization, key, prepared)
        return NetworkBackend(self.base, sessions, build, self.optimization)

    def backend(self, key: Hashable, build, components: Collection[str]) -> ExecutionBackend:
        """The backend for the set `key`, whose networks change the weights of `components`; on a miss,
        `build(components)` → {component: {initializer: array}} is called once per changed component that gets a
        session (all of them, but the UNet when the base refits it)."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return self._wrap(key, entry.sessions, entry.build, components)
        start = time.perf_counter()
        refit = self.refits_unet and "unet" in components
        sessions = self._create(build, [c for c in components if not (refit and c == "unet")])
        # Refitted engines need no UNet session, but the merge runs now: its errors belong to this request.
        prepared = build(["unet"])["unet"] if refit else None
        cost = sum(self.base.component_bytes(component) for component in sessions)
        self.last_build_seconds = time.perf_counter() - start
        log.info("networks %s: %d components rebuilt in %.2f s", key, len(sessions), self.last_build_seconds)
        with self._lock:
            self._cache[key] = _Entry(sessions, cost, build)
            self._cache.move_to_end(key)
            while len(self._cache) > 1 and sum(e.cost for e in self._cache.values()) > self.budget_bytes:
                evicted, _ = self._cache.popitem(last=False)
                log.info("networks %s: sessions evicted (budget %d MB)", evicted, self.budget_bytes >> 20)
        return self._wrap(key, sessions, build, components, prepared)

    def _create(self, build, components: Collection[str]) -> dict[str, object]:
        """One session per changed component, components concurrently (largest first): one component's merge
        (NumPy, which lets go of the GIL in its kernels) overlaps another's session creation."""

        def create(component: str):
            values = build([component])[component]
            return self.base.session_with_initializers(component, values, self.optimization)

        order = sorted(components, key=self.base.component_bytes, reverse=True)
        if len(order) <= 1:
            return {component: create(component) for component in order}
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lora-session") as pool:
            futures = {component: pool.submit(create, component) for component in order}
            return {component: future.result() for component, future in futures.items()}

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)


class ModelNetworks:
    """A loaded model's LoRA machinery: its weight map and its cache of merged sessions."""

    def __init__(self, pipeline, budget_bytes: int | None = None, optimization: str | None = LORA_OPTIMIZATION):
        from engine.lora import LoraMap

        self.pipeline = pipeline
        self.lora_map = LoraMap.load(pipeline.bundle.path)
        base = pipeline.backend
        if budget_bytes is None:
            # Room for two LoRA'd UNet + text encoder sets beside the base.
            budget_bytes = 2 * sum(base.component_bytes(c) for c in ("unet", "text_encoder"))
        self.sessions = (NetworkSessions(base, budget_bytes, optimization)
                         if hasattr(base, "session_with_initializers") else None)

    @property
    def supported(self) -> bool:
        return self.lora_map is not None and self.sessions is not None

    def pipeline_for(self, networks) -> tuple[object, dict]:
        """(the pipeline to run, merge reports per network) for [(LoadedNetwork, NetworkUse, identity)]: the base
        pipeline when the list is empty or every multiplier is 0 (or no network has a module)."""
        from engine.lora import NetworkError, changed_components, merged_weights

        # A file of bundled embeddings only changes no weight (its embeddings are the prompt encoder's).
        active = [(n, u, ident) for n, u, ident in networks if (u.te != 0 or u.unet != 0) and n.modules]
        if not active:
            return self.pipeline, {}
        if self.lora_map is None:
            raise NetworkError("this bundle has no LoRA weight map (lora_map.json): re-export it with this "
                               "sdedge version to use LoRAs")
        if self.sessions is None:
            raise NetworkError(f"LoRAs need a backend that takes merged weights (ONNX Runtime, OpenVINO); this "
                               f"model runs on {type(self.pipeline.backend).__name__} (use --backend ort for LoRAs)")
        key = tuple((ident, u.te, u.unet, u.dyn) for _, u, ident in active)
        pairs = [(n, u) for n, u, _ in active]
        reports: dict = {}

        def build(components=None):
            merged, found = merged_weights(self.pipeline.bundle.path, self.lora_map, pairs, components)
            reports.update(found)
            return merged

        # Only the components whose weights change get new sessions: a UNet-only set keeps the base text encoder.
        components = changed_components(self.lora_map, pairs)
        if not components:
            build([])  # nothing to rebuild; the merge reports still say which modules found no target
        backend = self.sessions.backend(key, build, components)
        return self.pipeline.with_backend(backend), reports

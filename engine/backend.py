"""Execution backends: run one bundle component (text encoder, UNet, VAE) on named NumPy inputs.

The pipeline only sees `ExecutionBackend`; ONNX Runtime (CPU, CUDA EP, TensorRT EP) is one implementation,
a native TensorRT backend slots in beside it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
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


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "float64"}


class OrtBackend:
    """ONNX Runtime sessions for a bundle's components, created on first use."""

    def __init__(self, bundle: Bundle, providers: str | Sequence[str] = "cpu", intra_op_threads: int = 0):
        import onnxruntime as ort

        self._ort = ort
        self.bundle = bundle
        self.requested_providers = (
            PROVIDER_PRESETS[providers] if isinstance(providers, str) else list(providers)
        )
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def session(self, component: str):
        with self._lock:
            if component not in self._sessions:
                options = self._ort.SessionOptions()
                if self.intra_op_threads:
                    options.intra_op_num_threads = self.intra_op_threads
                available = set(self._ort.get_available_providers())
                providers = [p for p in self.requested_providers if p in available] or ["CPUExecutionProvider"]
                session = self._ort.InferenceSession(
                    str(self.bundle.component_path(component)), sess_options=options, providers=providers
                )
                got = session.get_providers()
                if got[0] != providers[0]:
                    # onnxruntime-gpu without a usable GPU silently falls back to CPU: say so.
                    log.warning("%s: asked for %s, ONNX Runtime gave %s", component, providers, got)
                self._sessions[component] = session
            return self._sessions[component]

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session(component)
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, inputs)
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

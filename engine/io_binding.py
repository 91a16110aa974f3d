"""ONNX Runtime IO binding for the UNet: inputs and outputs live in device buffers that persist across steps.

`session.run()` copies every input to the device and every output back on every call. In our loop the sampler's
math runs in NumPy on the host, so the latent must cross twice per step (x in, ε out); the conditioning does not:
the same `encoder_hidden_states` (the largest input: 2×77×768 floats at batch 1, 3.6× the 512 px latent) is sent
every step of a prompt schedule. `IoBindingBackend` keeps one device buffer per input and shape and copies an
input only when its bytes changed since the last call (ORT's SD tooling, `io_binding_helper.py`, binds torch
tensors the same way). Fixed buffer addresses are also what CUDA graphs need: with `cuda_graph`, each distinct
set of input shapes gets its own graph id (`gpu_graph_id` run option) and ORT replays it.

On the CPU the same code runs with CPU OrtValues (the "copies" are then memcpy into the bound buffers): that is
how its results are checked against `run()` and its transfers counted without a GPU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

@dataclass
class TransferCounter:
    """Host↔device transfers made by the bound runs (counted where they are issued)."""

    h2d_copies: int = 0
    h2d_bytes: int = 0
    d2h_copies: int = 0
    d2h_bytes: int = 0
    kept_on_device: int = 0  # inputs not copied because the device already held the same bytes
    runs: int = 0

    def reset(self) -> None:
        for f in ("h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "kept_on_device", "runs"):
            setattr(self, f, 0)


@dataclass
class _Bound:
    binding: object
    inputs: dict[str, object]
    device: str
    host: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list | None = None
    graph_id: int | None = None


def c_order(array: np.ndarray, dtype=None) -> np.ndarray:
    """C-contiguous, 0-d arrays kept 0-d (np.ascontiguousarray makes them 1-d: optimum's scalar timestep)."""
    array = np.asarray(array, dtype=dtype)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    # Bitwise: -0.0 and 0.0 (or two NaN payloads) are different inputs to the UNet.
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.reshape(-1).view(np.uint8),
                                                                        b.reshape(-1).view(np.uint8))


class IoBindingBackend:
    """An `OrtBackend` (or anything with `.session(component)` and `.run`) whose `components` run through IO
    binding on `device`: "cuda", "cpu" (the binding code on CPU buffers: how it is tested), or "auto": CUDA when
    the session really got a GPU EP, else plain `run()`. Every other component and attribute is the inner
    backend's."""

    def __init__(self, inner, device: str = "auto", device_id: int = 0, components: Iterable[str] = ("unet",),
                 cuda_graph: bool = False, max_shapes: int = 4, counter: TransferCounter | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.inner = inner
        self.device = device
        self.device_id = device_id
        self.components = frozenset(components)
        self.cuda_graph = cuda_graph
        self.max_shapes = max_shapes
        self.counter = counter or TransferCounter()
        self._bound: OrderedDict[tuple, _Bound] = OrderedDict()
        self._graph_ids = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        # input_specs, output_names, providers, session_with_initializers, component_bytes, ...
        return getattr(self.inner, name)

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if component not in self.components:
            return self.inner.run(component, inputs)
        if self.device == "auto" and self._device_of(self.inner.session(component)) == "cpu":
            # No device to keep anything on (ORT gave the CPU): binding would only add host copies (per UNet call
            # within the noise of a loaded 2-core machine either way, docs/gpu.md).
            return self.inner.run(component, inputs)
        with self._lock:
            return self._run_bound(component, {k: c_order(v) for k, v in inputs.items()})

    def _entry(self, component: str, session, inputs: dict[str, np.ndarray]) -> _Bound:
        key = (component, tuple((n, a.shape, a.dtype.str) for n, a in sorted(inputs.items())))
        entry = self._bound.get(key)
        if entry is not None:
            self._bound.move_to_end(key)
            return entry
        binding = session.io_binding()
        device = self._device_of(session)
        values = {}
        for name, array in inputs.items():
            values[name] = self._ort.OrtValue.ortvalue_from_shape_and_type(
                array.shape, array.dtype, device, self.device_id)
            binding.bind_ortvalue_input(name, values[name])
        entry = _Bound(binding, values, device)
        if self.cuda_graph:
            # A captured graph replays fixed addresses: never evict (shapes come from a few profiles).
            self._graph_ids += 1
            entry.graph_id = self._graph_ids
        elif len(self._bound) >= self.max_shapes:
            self._bound.popitem(last=False)
        self._bound[key] = entry
        return entry

    def _device_of(self, session) -> str:
        """`device="auto"`: where the session really runs (onnxruntime-gpu without a usable GPU gives CPU)."""
        if self.device != "auto":
            return self.device
        return "cuda" if session.get_providers()[0] in GPU_PROVIDERS else "cpu"

    def _run_bound(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.inner.session(component)
        entry = self._entry(component, session, inputs)
        c = self.counter
        for name, array in inputs.items():
            last = entry.host.get(name)
            if last is not None and _same_bytes(last, array):
                c.kept_on_device += 1
                continue
            entry.inputs[name].update_inplace(array)
            entry.host[name] = array.copy()
            c.h2d_copies += 1
            c.h2d_bytes += array.nbytes
        names = [o.name for o in session.get_outputs()]
        if entry.outputs is None:
            for name in names:
                entry.binding.bind_output(name, entry.device, self.device_id)
        session.run_with_iobinding(entry.binding, self._run_options(entry))
        if entry.outputs is None:
            # Keep ORT's first output buffers bound from now on: fixed addresses (what a CUDA graph replays), no
            # allocation per step.
            entry.outputs = entry.binding.get_outputs()
            for name, value in zip(names, entry.outputs, strict=True):
                entry.binding.bind_ortvalue_output(name, value)
        c.runs += 1
        result = {}
        for name, value in zip(names, entry.outputs, strict=True):
            host = value.numpy()  # from a CUDA buffer: a new host array
            if entry.device == "cpu":
                # The sampler keeps earlier outputs (DPM++ 2M, PLMS): they must not alias the reused CPU buffer.
                host = host.copy()
            c.d2h_copies += 1
            c.d2h_bytes += host.nbytes
            result[name] = host
        return result

    def _run_options(self, entry: _Bound):
        options = getattr(self.inner, "_run_options", None)
        if entry.graph_id is None:
            return options
        run_options = self._ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(entry.graph_id))
        return run_options

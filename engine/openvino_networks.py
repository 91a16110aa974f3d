"""LoRA on the OpenVINO backend: a component's model with some ONNX initializers replaced by merged weights.

The same seam as ONNX Runtime's (engine/network_sessions.py: `session_with_initializers`, `run_session`): the merged
weights of a LoRA set (engine/lora.py, keyed by ONNX initializer name, stored layout, float32) replace the
corresponding Constant nodes of the component's ov.Model before it is compiled.

How OpenVINO names them: its ONNX frontend makes every initializer a Constant whose output tensor carries the
initializer's name (and whose friendly name is that name). In the f16 IR (`compress_to_fp16`, engine/
openvino_backend.py) a weight is an f16 Constant, output tensor still named after the initializer (friendly name
`<name>_compressed`), feeding a Convert to f32 that carries the friendly name. Looking Constants up by output tensor
name finds both; a replacement keeps the Constant's element type (f16 in the IR: the Convert stays, the graph the
plugin sees is the base's), so a merged model compiles exactly as its base does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

_NUMPY_TYPES = {"f32": np.float32, "f16": np.float16}


def replace_initializers(model, values: dict[str, np.ndarray]) -> None:
    """Replace in `model` (an ov.Model, in place) the Constant of every ONNX initializer named in `values`.

    Raises ValueError when a name has no Constant or a shape differs: a weight silently left at its base value would
    give a plausible but wrong image."""
    import openvino as ov

    found = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            for name in op.output(0).get_names() & values.keys():
                found[name] = op
    missing = sorted(values.keys() - found.keys())
    if missing:
        raise ValueError(f"{len(missing)} merged weights have no Constant in the OpenVINO model: {missing[:3]}")
    for name, old in found.items():
        element = old.get_element_type().get_type_name()
        if element not in _NUMPY_TYPES:
            raise ValueError(f"{name}: a {element} Constant, expected f32 or f16")
        value = np.ascontiguousarray(values[name], dtype=_NUMPY_TYPES[element])
        if tuple(old.get_output_shape(0)) != value.shape:
            raise ValueError(f"{name}: merged shape {value.shape}, model has {tuple(old.get_output_shape(0))}")
        # shared_memory: the Constant views the array (f32: the merged array itself, no second copy); the Constant
        # keeps the array alive.
        new = ov.op.Constant(value, shared_memory=True)
        new.set_friendly_name(old.get_friendly_name())
        new.output(0).set_names(old.output(0).get_names())
        old.output(0).replace(new.output(0))


class MergedModel:
    """A component with merged weights on an OpenVinoBackend: the returned `session` of `session_with_initializers`.

    Holds the merged ov.Model (dynamic shapes, never compiled itself; its replaced Constants hold the merged arrays, the rest stay mapped
    from the file) so that a new input shape can be compiled without merging again; compiled per input shapes in an
    LRU of the backend's `shapes_per_component`, like the base components."""

    def __init__(self, backend, component: str, values: dict[str, np.ndarray]):
        self.backend = backend
        self.component = component
        self.model = backend.read_model(component)
        replace_initializers(self.model, values)
        self._compiled: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def compiled(self, shapes: dict[str, tuple[int, ...]]):
        from engine.openvino_backend import _key

        key = _key(shapes)
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
            while len(self._compiled) >= self.backend.shapes_per_component:
                self._compiled.popitem(last=False)
            # A clone per compile (its Constants share the merged arrays): compile_static makes the model static in
            # place (reshape, bf16's timestep rewrite to fixed shapes), which the next shape could not start from.
            compiled = self._compiled[key] = self.backend.compile_static(self.model.clone(), self.component, shapes)
            return compiled

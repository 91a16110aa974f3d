"""Where each LoRA target of a bundle lives: kohya module key → the ONNX initializer holding its weight.

The TorchScript exporter folds and renames weights (a Linear's weight becomes a pre-transposed `onnx::MatMul_<n>`)
and keeps no record of which parameter became which initializer. So the map is built by value while torch is
still there: every Linear/Conv2d weight of the exported modules, as it is and transposed, is looked up by the hash
of its bytes among the component's initializers. A hit must be unique (a weight found in two initializers, or two
weights with the same bytes, stays unmapped and is reported). The engine reads the base weight straight from the
data file at the recorded offset, so it needs neither torch nor onnx to merge a LoRA (engine/lora.py).

Keys are what kohya's sd-scripts (and A1111's Lora extension after its own renaming) use for diffusers-layout
models: the diffusers module path with `.` → `_`, prefixed `lora_unet_` / `lora_te_` (SDXL: `lora_te1_`, `lora_te2_`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

log = logging.getLogger(__name__)

LORA_MAP_NAME = "lora_map.json"
LORA_MAP_VERSION = 1


@dataclass(frozen=True)
class Target:
    key: str
    component: str
    initializer: str
    layout: str  # "N": stored as torch holds it; "T": a 2-D weight stored transposed (MatMul)
    shape: tuple[int, ...]  # torch's shape
    file: str
    offset: int
    length: int

    def to_dict(self) -> dict:
        return {"component": self.component, "initializer": self.initializer, "layout": self.layout,
                "shape": list(self.shape), "file": self.file, "offset": self.offset, "length": self.length}


def _external_initializers(model_path: Path) -> dict[str, tuple[str, bytes, int, int]]:
    """Main-graph initializers stored in a data file: name → (file, sha256 of the bytes, offset, length).

    Only main-graph external tensors can be replaced when a session is created
    (SessionOptions.add_external_initializers), so only those are candidates."""
    model = onnx.load(str(model_path), load_external_data=False)
    found: dict[str, tuple[str, bytes, int, int]] = {}
    handles: dict[str, object] = {}
    try:
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor) or tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            info = ExternalDataInfo(tensor)
            if info.location not in handles:
                handles[info.location] = open(model_path.parent / info.location, "rb")  # noqa: SIM115
            handle = handles[info.location]
            handle.seek(info.offset)
            data = handle.read(info.length)
            found[tensor.name] = (info.location, hashlib.sha256(data).digest(), info.offset, info.length)
    finally:
        for handle in handles.values():
            handle.close()
    return found


def _module_weights(module, prefix: str):
    """(kohya key, weight as float32 numpy) for every Linear and Conv2d of a torch module; biases as
    `<key>.bias` (full-weight networks carry bias differences)."""
    import torch

    for name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)) and name:
            key = prefix + name.replace(".", "_")
            yield key, sub.weight.detach().to(torch.float32).contiguous().numpy()
            if sub.bias is not None:
                yield key + ".bias", sub.bias.detach().to(torch.float32).contiguous().numpy()


def map_component(module, prefix: str, component: str, model_path: Path) -> tuple[list[Target], list[str]]:
    """Map every Linear/Conv2d weight of `module` to its initializer in `model_path`; also the keys left unmapped."""
    import numpy as np

    by_hash: dict[bytes, list[str]] = {}
    initializers = _external_initializers(model_path)
    for name, (_, digest, _, _) in initializers.items():
        by_hash.setdefault(digest, []).append(name)
    targets: list[Target] = []
    unmapped: list[str] = []
    claimed: dict[str, str] = {}
    for key, weight in _module_weights(module, prefix):
        hits = []
        for layout, array in (("N", weight), ("T", np.ascontiguousarray(weight.T) if weight.ndim == 2 else None)):
            if array is None:
                continue
            for name in by_hash.get(hashlib.sha256(array.tobytes()).digest(), []):
                hits.append((layout, name))
        if len(hits) != 1 or hits[0][1] in claimed:
            unmapped.append(key)
            if hits and hits[0][1] in claimed:
                unmapped.append(claimed[hits[0][1]])
            continue
        layout, name = hits[0]
        claimed[name] = key
        file, _, offset, length = initializers[name]
        targets.append(Target(key, component, name, layout, tuple(weight.shape), file, offset, length))
    ambiguous = set(unmapped)
    return [t for t in targets if t.key not in ambiguous], sorted(ambiguous)


def lora_modules(pipe) -> dict[str, tuple[object, str]]:
    """The modules LoRAs target in a diffusers pipeline, with kohya's key prefix for each."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    else:
        encoders = {"text_encoder": "lora_te_"}
    modules = {"unet": (pipe.unet, "lora_unet_")}
    for component, prefix in encoders.items():
        if getattr(pipe, component, None) is not None:
            modules[component] = (getattr(pipe, component), prefix)
    return modules


def write_lora_map(bundle: Path, modules: dict[str, tuple[object, str]]) -> dict:
    """Write `lora_map.json` into a bundle folder. `modules`: component → (torch module, kohya key prefix).

    Returns the summary recorded in the file (targets and unmapped keys per component)."""
    targets: dict[str, dict] = {}
    summary: dict[str, dict] = {}
    for component, (module, prefix) in modules.items():
        found, unmapped = map_component(module, prefix, component, bundle / component / "model.onnx")
        targets.update({t.key: t.to_dict() for t in found})
        # A bias equal to another (zeros, say) cannot be located by value; only full-weight networks need biases.
        unmapped = [key for key in unmapped if not key.endswith(".bias")]
        summary[component] = {"prefix": prefix, "mapped": len(found), "unmapped": unmapped}
        if unmapped:
            log.warning("%s: %d Linear/Conv2d weights could not be located in the ONNX graph; LoRAs cannot "
                        "change them: %s", component, len(unmapped), ", ".join(unmapped[:5]))
    data = {"version": LORA_MAP_VERSION, "components": summary, "targets": targets}
    (bundle / LORA_MAP_NAME).write_text(json.dumps(data, indent=1, sort_keys=True))
    return data

"""On-disk layout of one bundle component: `model.onnx`, plus one `model.onnx_data` when weights go external.

torch.onnx.export writes a model over 2 GiB (protobuf's limit) as one file per tensor: SD 1.5's UNet is ~700
files. Every component here is re-saved with all its external tensors in one data file beside the graph, in
graph order, each large tensor at an offset that is a multiple of 64 KiB: ORT memory-maps external initializers
on CPU, and its own writer aligns them to the allocation granularity for that (4 KiB pages on Linux, 64 KiB on
Windows; onnxruntime/include/onnxruntime/core/graph/model_saving_options.h, ModelSavingOptions). ORT 1.31 on
Linux was measured mapping unaligned offsets too; the alignment keeps Windows mapping them. onnx 1.23's
save_model has no alignment option, but its external-data writer honours offsets set beforehand, padding the
gap with zeros up to 64 KiB (onnx/external_data_helper.py, save_external_data). The data file is written here
directly instead, tensor by tensor: torch's per-tensor files are streamed into it, so re-saving a 3.4 GB UNet
does not hold a second copy of its weights in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

DATA_SUFFIX = "_data"
# Whole-model weight size from which the weights go to `model.onnx_data`; anything over 2 GiB must (protobuf's
# limit). 0: every component has a data file, small models too. ORT then maps the weights instead of parsing
# them out of the protobuf: session creation 0.95 s instead of 2.8 s for 800 MB of MatMul weights, and weights
# ORT does not prepack stay file-backed (shared page cache, reclaimable) instead of anonymous memory
# (docs/architecture.md, "The bundle"). One layout for every model also means the tiny test models
# exercise the path SD 1.5 takes. A huge value keeps a component in one self-contained `model.onnx`.
EXTERNAL_DATA_THRESHOLD = 0
# Tensors below this stay inside model.onnx (onnx's own default): scalars, shape constants.
TENSOR_SIZE_THRESHOLD = 1024
# ORT's ModelSavingOptions: tensors of 1 MiB and more are aligned for mmap; 64 KiB covers Windows' allocation
# granularity and every Linux page size (4/16/64 KiB); smaller tensors only get a 64-byte (cache line) alignment.
ALIGN_THRESHOLD = 1 << 20
PAGE_ALIGNMENT = 64 * 1024
SMALL_ALIGNMENT = 64


@dataclass(frozen=True)
class ComponentFiles:
    """What save_component wrote: the data file's name and size (None/0 for a self-contained model)."""

    model: str
    data: str | None
    data_bytes: int

    def to_dict(self) -> dict:
        """For the manifest's io entry: every external file with its exact size, checked on load."""
        return {"external_data": {self.data: self.data_bytes} if self.data else {}}


def data_file_name(model_path: Path) -> str:
    return Path(model_path).name + DATA_SUFFIX


def _weight_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """Initializers of the main graph and of every subgraph (If/Loop bodies), in graph order."""
    found: list[TensorProto] = []

    def visit(graph: onnx.GraphProto) -> None:
        found.extend(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    return found


def _align(offset: int, size: int) -> int:
    step = PAGE_ALIGNMENT if size >= ALIGN_THRESHOLD else SMALL_ALIGNMENT
    return -(-offset // step) * step


def _size(tensor: TensorProto, base_dir: Path | None) -> int:
    if not uses_external_data(tensor):
        return len(tensor.raw_data)
    info = ExternalDataInfo(tensor)
    if info.length is not None:
        return info.length
    return _external_file(info, base_dir).stat().st_size - (info.offset or 0)


def _external_file(info: ExternalDataInfo, base_dir: Path | None) -> Path:
    if base_dir is None:
        raise ValueError("the model has external tensors: pass the folder their files are in (base_dir)")
    return Path(base_dir) / info.location


def _tensor_bytes(tensor: TensorProto, base_dir: Path | None) -> bytes:
    """The tensor's data, read from its external file if it has one (one tensor in memory at a time)."""
    if not uses_external_data(tensor):
        return tensor.raw_data
    info = ExternalDataInfo(tensor)
    file = _external_file(info, base_dir)
    with open(file, "rb") as f:
        f.seek(info.offset or 0)
        data = f.read() if info.length is None else f.read(info.length)
    if info.length is not None and len(data) != info.length:
        raise OSError(f"{file}: {tensor.name} needs {info.length} bytes at offset {info.offset or 0}, "
                      f"the file has {len(data)}")
    return data


def _point_at(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def _inline(tensor: TensorProto, base_dir: Path | None) -> None:
    if uses_external_data(tensor):
        tensor.raw_data = _tensor_bytes(tensor, base_dir)
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


def save_component(model: onnx.ModelProto, path: Path, external_threshold: int = EXTERNAL_DATA_THRESHOLD,
                   base_dir: Path | None = None) -> ComponentFiles:
    """Write `model` as `path`, and its weights as one aligned `path`_data file when they total
    `external_threshold` bytes or more (else everything in `path`, which protobuf allows below 2 GiB).

    Weights come from the model in memory, or, for tensors already external, from their files in `base_dir`
    (the folder of a model loaded with `load_external_data=False`), one tensor at a time, so a model over 2 GiB
    is never in memory whole. The weights are moved out of `model` (as onnx.save_model does). Both files are
    written in a temporary folder beside `path` and renamed into place: an interrupted save leaves the
    previous files (or none), never a half-written one under the final name."""
    path = Path(path)
    tensors = _weight_tensors(model)
    sizes = [_size(t, base_dir) for t in tensors]
    external = sum(sizes) >= external_threshold and max(sizes, default=0) >= TENSOR_SIZE_THRESHOLD
    data_name = data_file_name(path) if external else None
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".save-", dir=path.parent))
    try:
        end = 0
        if data_name:
            with open(scratch / data_name, "wb") as data:
                for tensor, size in zip(tensors, sizes, strict=True):
                    if size < TENSOR_SIZE_THRESHOLD:
                        _inline(tensor, base_dir)
                        continue
                    offset = _align(end, size)
                    data.write(b"\0" * (offset - end))
                    data.write(_tensor_bytes(tensor, base_dir))
                    _point_at(tensor, data_name, offset, size)
                    end = offset + size
            if (scratch / data_name).stat().st_size != end:
                raise OSError(f"{scratch / data_name}: expected {end} bytes")
        else:
            for tensor in tensors:
                _inline(tensor, base_dir)
        onnx.save_model(model, str(scratch / path.name))  # every weight is inline or already written
        if data_name:
            os.replace(scratch / data_name, path.parent / data_name)
        else:
            (path.parent / data_file_name(path)).unlink(missing_ok=True)
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ComponentFiles(model=path.name, data=data_name, data_bytes=end)


def relayout(src: Path, dst: Path, external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> ComponentFiles:
    """Re-save the model at `src` (self-contained, torch's file per tensor, or one data file) in this layout at
    `dst`, streaming external tensors from their files."""
    model = onnx.load(str(src), load_external_data=False)
    return save_component(model, dst, external_threshold, base_dir=Path(src).parent)


def replace_graph(model: onnx.ModelProto, path: Path) -> None:
    """Rewrite only the graph file of a component in place (atomically); external tensors keep pointing at the
    data file(s) already beside it. For graph rewrites loaded with `load_external_data=False`."""
    path = Path(path)
    for tensor in _weight_tensors(model):
        if uses_external_data(tensor) and tensor.HasField("raw_data"):
            raise ValueError(f"{tensor.name}: external tensor with data in memory; use save_component")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


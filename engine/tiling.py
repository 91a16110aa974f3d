"""Seamless tiling: the UNet and VAE graphs with circular padding, derived from a bundle's own graphs.

A1111 (modules/sd_hijack.py: StableDiffusionModelHijack.apply_circular) sets `padding_mode='circular'` on every
`torch.nn.Conv2d` of the loaded model when a request asks for `tiling`: torch then wraps the input around
(`F.pad(x, pad, mode='circular')`) and runs the convolution unpadded. Only convolutions with padding change;
1×1 convolutions and the VAE encoder's stride-2 `Downsample` (explicit zero pad (0, 1, 0, 1) before a padding-0
convolution, LDM `ldm/modules/diffusionmodules/model.py: Downsample`) stay as they are.

The same rewrite on an ONNX graph: every 2-D `Conv` with non-zero `pads` gets its input wrapped by
`Slice` + `Concat` along H and W (the last `top` rows before, the first `bottom` rows after; then the columns)
and loses its `pads`. Slice and Concat exist at every opset our graphs use (≥ 13; Slice takes its bounds as inputs
from opset 10), so the graph keeps its opset: `Pad(mode="wrap")` would need Pad-19, and raising a whole opset-17
graph's opset changes other operators' semantics (ReduceMean's axes, Resize). Weights are untouched: the rewritten
graph still names the bundle's `model.onnx_data`, and ONNX Runtime loads it from memory with the component's
folder as the place of its external data, so nothing is written and no weight is copied on disk.

The graph file is read with `google.protobuf` (a dependency of onnxruntime) through a descriptor of the few
ONNX messages the rewrite touches; every other field is carried through as an unknown field, unchanged. The
engine never imports the `onnx` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from engine.backend import ExecutionBackend, TensorSpec

# The components A1111's hijack reaches (the text encoder has no convolution).
TILED_COMPONENTS = ("unet", "vae_decoder", "vae_encoder")
# A backend component name `unet:circular` is the circular-padding variant of `unet`.
VARIANT_SEPARATOR = ":"
CIRCULAR = "circular"
# The external-data folder of a model ONNX Runtime loads from bytes (onnxruntime_session_options_config_keys.h).
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"

_INT64_MAX = np.iinfo(np.int64).max
_INT64 = 7  # TensorProto.DataType.INT64
_INT_ATTRIBUTE = 2  # AttributeProto.AttributeType.INT
_MIN_OPSET = 10  # Slice with starts/ends/axes as inputs


class TilingUnsupported(ValueError):
    """A graph the circular rewrite cannot handle (an old IR or opset, a Conv with implicit padding)."""


def _onnx_subset():
    """Message classes for the part of onnx.proto (proto2) the rewrite reads and writes, in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(name="sdedge_onnx_subset.proto", package="onnx", syntax="proto2")

    def message(name: str, *fields: tuple) -> None:
        m = file.message_type.add(name=name)
        for field_name, number, label, kind, *type_name in fields:
            f = m.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                f.type_name = f".onnx.{type_name[0]}"
            if label == repeated and kind == F.TYPE_INT64 and name == "TensorProto":
                f.options.packed = True  # onnx.proto: `repeated int64 int64_data = 7 [packed = true]`

    message("OperatorSetIdProto", ("domain", 1, optional, F.TYPE_STRING), ("version", 2, optional, F.TYPE_INT64))
    message("TensorProto", ("dims", 1, repeated, F.TYPE_INT64), ("data_type", 2, optional, F.TYPE_INT32),
            ("name", 8, optional, F.TYPE_STRING), ("raw_data", 9, optional, F.TYPE_BYTES))
    message("AttributeProto", ("name", 1, optional, F.TYPE_STRING), ("i", 3, optional, F.TYPE_INT64),
            ("s", 4, optional, F.TYPE_BYTES), ("g", 6, optional, F.TYPE_MESSAGE, "GraphProto"),
            ("ints", 8, repeated, F.TYPE_INT64), ("graphs", 11, repeated, F.TYPE_MESSAGE, "GraphProto"),
            ("type", 20, optional, F.TYPE_INT32))
    message("NodeProto", ("input", 1, repeated, F.TYPE_STRING), ("output", 2, repeated, F.TYPE_STRING),
            ("name", 3, optional, F.TYPE_STRING), ("op_type", 4, optional, F.TYPE_STRING),
            ("attribute", 5, repeated, F.TYPE_MESSAGE, "AttributeProto"), ("domain", 7, optional, F.TYPE_STRING))
    message("GraphProto", ("node", 1, repeated, F.TYPE_MESSAGE, "NodeProto"),
            ("initializer", 5, repeated, F.TYPE_MESSAGE, "TensorProto"))
    message("ModelProto", ("ir_version", 1, optional, F.TYPE_INT64),
            ("graph", 7, optional, F.TYPE_MESSAGE, "GraphProto"),
            ("opset_import", 8, repeated, F.TYPE_MESSAGE, "OperatorSetIdProto"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"onnx.{m.name}"))
            for m in file.message_type}


_messages = cache(_onnx_subset)


@dataclass(frozen=True)
class CircularGraph:
    """A rewritten graph (serialized ModelProto) and how many convolutions it wraps."""

    model: bytes
    convolutions: int


def circular_padding(model: bytes) -> CircularGraph:
    """`model` (a serialized ONNX ModelProto) with every padded 2-D Conv circularly padded (module docstring)."""
    proto = _messages()["ModelProto"]()
    proto.ParseFromString(model)
    if proto.ir_version and proto.ir_version < 4:
        raise TilingUnsupported(f"IR version {proto.ir_version}: initializers must be graph inputs before IR 4")
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < _MIN_OPSET:
        raise TilingUnsupported(f"opset {opset}: Slice takes its bounds as inputs from opset {_MIN_OPSET}")
    count = _rewrite_graph(proto.graph, _Names())
    return CircularGraph(proto.SerializeToString(), count)


class _Names:
    """Fresh tensor names, unique across the model (subgraphs see their parents' names)."""

    PREFIX = "sdedge_circular"

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, what: str) -> str:
        self.count += 1
        return f"{self.PREFIX}/{what}_{self.count}"


def _attribute(node, name: str):
    return next((a for a in node.attribute if a.name == name), None)


def _pads(node) -> list[int] | None:
    """The explicit pads of a 2-D Conv (t, l, b, r) if any is non-zero, else None."""
    auto_pad = _attribute(node, "auto_pad")
    if auto_pad is not None and auto_pad.s not in (b"", b"NOTSET"):
        if auto_pad.s == b"VALID":
            return None
        raise TilingUnsupported(f"Conv {node.name!r} pads implicitly (auto_pad={auto_pad.s.decode()})")
    pads = _attribute(node, "pads")
    if pads is None or len(pads.ints) != 4 or not any(pads.ints):
        return None
    return list(pads.ints)


def _rewrite_graph(graph, names: _Names) -> int:
    """Rewrite one graph and, first, the subgraphs of its nodes (If/Loop bodies); the number of Convs wrapped."""
    messages = _messages()
    tensor_class, node_class = messages["TensorProto"], messages["NodeProto"]
    constants: dict[int, str] = {}  # int64 value → name of a [1]-shaped initializer in this graph

    def constant(value: int) -> str:
        if value not in constants:
            name = names(f"i64_{value}")
            graph.initializer.append(tensor_class(
                name=name, dims=[1], data_type=_INT64, raw_data=np.array([value], "<i8").tobytes()))
            constants[value] = name
        return constants[value]

    count = 0
    nodes = []
    for original in graph.node:
        node = node_class()
        node.CopyFrom(original)  # a copy: the graph's own nodes are replaced below
        for attribute in node.attribute:
            if attribute.HasField("g"):
                count += _rewrite_graph(attribute.g, names)
            for sub in attribute.graphs:
                count += _rewrite_graph(sub, names)
        pads = _pads(node) if node.op_type == "Conv" and node.domain in ("", "ai.onnx") else None
        if pads is None:
            nodes.append(node)
            continue
        x = node.input[0]
        for axis, before, after in ((2, pads[0], pads[2]), (3, pads[1], pads[3])):
            if not before and not after:
                continue
            parts = []
            if before:  # the last `before` rows (columns) come first
                parts.append(names("wrap_before"))
                nodes.append(node_class(op_type="Slice", name=parts[-1], output=[parts[-1]],
                                        input=[x, constant(-before), constant(_INT64_MAX), constant(axis)]))
            parts.append(x)
            if after:  # the first `after` rows (columns) come last
                parts.append(names("wrap_after"))
                nodes.append(node_class(op_type="Slice", name=parts[-1], output=[parts[-1]],
                                        input=[x, constant(0), constant(after), constant(axis)]))
            x = names("wrapped")
            concat = node_class(op_type="Concat", name=x, output=[x], input=parts)
            concat.attribute.add(name="axis", i=axis, type=_INT_ATTRIBUTE)
            nodes.append(concat)
        node.input[0] = x
        del node.attribute[[a.name for a in node.attribute].index("pads")]
        nodes.append(node)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def variant_model(path: Path, variant: str) -> bytes:
    """The serialized graph of a component's variant (ONNX Runtime loads it with `EXTERNAL_DATA_FOLDER` set to
    `path`'s folder, where its weights stay)."""
    if variant != CIRCULAR:
        raise ValueError(f"unknown graph variant {variant!r}")
    return circular_padding(Path(path).read_bytes()).model


def circular(component: str) -> str:
    """The backend name of `component`'s circular-padding variant (the component itself if it has no conv)."""
    return f"{component}{VARIANT_SEPARATOR}{CIRCULAR}" if component in TILED_COMPONENTS else component


class CircularBackend:
    """A backend view that runs the UNet and the VAE with circular padding: `unet` is the inner backend's
    `unet:circular`, whose session the inner backend creates on first use and keeps (beside the plain one, so
    untiled requests are unaffected); the text encoder is shared."""

    circular = True

    def __init__(self, inner: ExecutionBackend):
        self.inner = inner

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.run(circular(component), inputs)

    def input_specs(self, component: str) -> list[TensorSpec]:
        return self.inner.input_specs(circular(component))

    def output_names(self, component: str) -> list[str]:
        return self.inner.output_names(circular(component))

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

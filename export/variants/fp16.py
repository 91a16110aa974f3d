"""fp32 → fp16 conversion of one component graph, with the fp32 islands demoDiffusion's fp16 export has.

demoDiffusion exports diffusers' fp16 modules; diffusers computes the sinusoidal timestep embedding in fp32
(`get_timestep_embedding` works on `timesteps.float()`, `TimestepEmbedding` input cast back by
`UNet2DConditionModel.get_time_embed`: "timesteps does not contain any weights and will always return f32
tensors"), so the graph casts to fp16 only before `time_embedding.linear_1`. The same holds here: every node on the
path from `timestep` (and SDXL's `time_ids`) up to the first MatMul/Gemm stays fp32. In fp16 a fractional timestep
like 998.7 rounds to 998.5 and `t·freq` to a step of 0.5 rad, so sin/cos of the high frequencies would be noise.
SD 2.x's `upcast_attention` (the UNet config's flag; SD 2.x 768-v sets it): Q·Kᵀ, softmax and ·V stay fp32, as
A1111's `upcast_attn` and ORT's `--force_fp32_ops unet:MultiHeadAttention` keep them (diffusers upcasts Q·Kᵀ and the
softmax). The converter cannot block nodes inside If/Loop bodies (it puts their casts into the main graph, an
invalid graph), and our attention is chunked (export/attention_chunking.py: If/Loop). So the attention is
unchunked first (export/variants/unchunk.py: the exact original nodes), its MatMul→Softmax→MatMul blocked by name
(the converter casts Q, K, V to fp32 in front and the output back to fp16 after), and the converted graph chunked
again with the source's score budget: the chain is fp32 there, so its chunks are the portable graph's.

The converter is ONNX Runtime's (`onnxruntime.transformers.float16`, the one its SD tooling uses; a copy of
onnxconverter-common's). IO types stay fp32 (`keep_io_types`): the NumPy loop feeds and reads float32, the cast at
the graph's edge costs one elementwise pass per call. Weights go to the bundle's layout (one aligned
`model.onnx_data`, export/onnx_layout.py), so a 3.4 GB UNet (1.7 GB in fp16) has no protobuf limit to hit.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

TIME_INPUTS = ("timestep", "time_ids")
_LINEAR = {"MatMul", "Gemm"}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def _all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    graphs = [graph]
    for node in graph.node:
        for sub in _subgraphs(node):
            graphs.extend(_all_graphs(sub))
    return graphs


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node (subgraphs included) a unique name: the converter blocks nodes by name, and the
    attention chunking's nodes have none."""
    seen: Counter[str] = Counter()
    for graph in _all_graphs(model.graph):
        for node in graph.node:
            base = node.name or f"/fp16_named/{node.op_type}"
            seen[base] += 1
            node.name = base if seen[base] == 1 else f"{base}__{seen[base]}"


def timestep_path_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes computing from the time inputs up to (not including) the first MatMul/Gemm."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    inputs = {i.name for i in model.graph.input}
    frontier = [name for name in TIME_INPUTS if name in inputs]
    found: dict[str, None] = {}
    while frontier:
        for node in users.get(frontier.pop(), []):
            if node.op_type in _LINEAR or node.name in found:
                continue
            found[node.name] = None
            frontier.extend(node.output)
    return list(found)


def drop_duplicate_nodes(model: onnx.ModelProto) -> int:
    """Remove exact duplicate nodes. The converter inserts one Cast per blocked consumer of a tensor, under one
    name and one output (Sin and Cos both reading `time_proj/Mul`): an invalid graph (two producers)."""
    removed = 0
    for graph in _all_graphs(model.graph):
        seen: set[bytes] = set()
        keep = []
        for node in graph.node:
            key = node.SerializeToString(deterministic=True)
            if key in seen:
                removed += 1
                continue
            seen.add(key)
            keep.append(node)
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)
    return removed


def io_signature(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in [*model.graph.input, *model.graph.output]]


def restore_io(model: onnx.ModelProto, signature: list[onnx.ValueInfoProto]) -> None:
    """Put the fp32 inputs/outputs (names, dtypes, dynamic axes) back as they were before the conversion: the
    converter rebuilds the outputs it keeps in fp32 without their shapes."""
    by_name = {v.name: v for v in signature}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in by_name:
            value.CopyFrom(by_name[value.name])


def toposorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter appends the casts of the graph inputs at the end; ONNX wants nodes in topological order."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.toposort()
    return gs.export_onnx(graph, do_type_check=False)


def sort_nodes(model: onnx.ModelProto) -> None:
    """Topological order of the main graph in place (stable; a node using a name inside its If/Loop bodies waits
    for that name's producer too). Without graphsurgeon: that would load every weight into NumPy."""
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}

    def needs(node: onnx.NodeProto) -> set[int]:
        names = set(node.input)
        for sub in _subgraphs(node):
            for inner in _all_graphs(sub):
                for n in inner.node:
                    names.update(n.input)
        return {producer[n] for n in names if n in producer}

    deps = [needs(node) for node in graph.node]
    order: list[int] = []
    placed: set[int] = set()
    pending = list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            if deps[i] <= placed | {i}:
                order.append(i)
                placed.add(i)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise ValueError(f"{graph.name}: the graph has a cycle")
        pending = rest
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def chunk_budget(model: onnx.ModelProto) -> int | None:
    """The score budget of a chunked graph (export/attention_chunking.py), None when it has no chunked attention."""
    from onnx import numpy_helper

    from export.attention_chunking import _PREFIX, BUDGET_SUFFIX

    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0].startswith(_PREFIX) and node.output[0].endswith(
                "/" + BUDGET_SUFFIX):
            return int(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])
    return None


def attention_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of every attention chain's MatMul → Softmax → MatMul in the main graph (unchunked)."""
    from export.attention_chunking import _find

    return [n.name for m in _find(model) for n in (m.scores, m.softmax, m.output)]


def drop_unused_nodes(model: onnx.ModelProto) -> int:
    """Remove main-graph nodes none of whose outputs is used (by a node, a subgraph, or as a graph output):
    unchunking leaves the chunking's shape arithmetic behind, under the names chunking again would reuse."""
    graph = model.graph
    removed = 0
    while True:
        used = {o.name for o in graph.output}
        for inner in _all_graphs(graph):
            for node in inner.node:
                used.update(node.input)
        keep = [n for n in graph.node if any(out in used for out in n.output)]
        if len(keep) == len(graph.node):
            return removed
        removed += len(graph.node) - len(keep)
        del graph.node[:]
        graph.node.extend(keep)


def upcasts_attention(src: Path) -> bool:
    """The component's diffusers config (beside its graph) asks for fp32 attention scores."""
    import json

    config = Path(src).parent / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("upcast_attention"))


def _initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for graph in _all_graphs(model.graph) for t in graph.initializer]


def convert_file(src: Path, fp32_attention: bool | None = None) -> onnx.ModelProto:
    """The fp16 graph of the component at `src`, converted without loading its fp32 weights whole;
    `fp32_attention` (default: the config's `upcast_attention`) keeps Q·Kᵀ, softmax and ·V in fp32.

    The converter runs on the graph with its weights left in the data file (it only changes the types of the
    external initializers it converts); those are then read one at a time, converted with the converter's own
    `convert_np_to_float16` (values clamped to fp16's range) and kept in memory: 1.7 GB for SD 1.5's UNet instead
    of the 15 GB RSS (and an OOM kill) of converting the loaded model. Weights that stay fp32 (used by fp32 nodes
    only) still point at the source data file: save with `save_component(model, out, base_dir=src.parent)`.
    Shape inference runs on the file (`infer_shapes_path`): a model over 2 GiB cannot be inferred in memory."""
    import tempfile

    import numpy as np
    from onnx.external_data_helper import uses_external_data
    from onnxruntime.transformers.float16 import convert_float_to_float16, convert_np_to_float16

    from export.onnx_layout import _tensor_bytes

    with tempfile.TemporaryDirectory(dir=Path(src).parent, prefix=".fp16-") as tmp:
        inferred = Path(tmp) / Path(src).name
        onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
        model = onnx.load(str(inferred), load_external_data=False)
    was_float = {t.name for t in _initializers(model) if t.data_type == onnx.TensorProto.FLOAT}
    signature = io_signature(model)
    upcast = upcasts_attention(src) if fp32_attention is None else fp32_attention
    budget = chunk_budget(model) if upcast else None
    if budget is not None:
        from export.variants.unchunk import unchunk_attention

        unchunk_attention(model)
        drop_unused_nodes(model)
    name_nodes(model)
    blocked = timestep_path_nodes(model) + (attention_nodes(model) if upcast else [])
    from onnxruntime.transformers import float16 as ort_float16

    # The converter takes a converted initializer's shape from its values (numpy_helper.to_array), which would
    # read the external data, as fp16, from the working directory; the dims say the same without reading.
    original = ort_float16.make_value_info_from_tensor
    ort_float16.make_value_info_from_tensor = lambda t: onnx.helper.make_tensor_value_info(
        t.name, t.data_type, list(t.dims))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=[],
                                             node_block_list=blocked, disable_shape_infer=True)
    finally:
        ort_float16.make_value_info_from_tensor = original
    drop_duplicate_nodes(converted)
    sort_nodes(converted)
    restore_io(converted, signature)
    if budget is not None:
        from export.attention_chunking import chunk_attention

        chunk_attention(converted, budget)  # the fp32 chains again as the portable graph chunks them
    for tensor in _initializers(converted):
        if tensor.name in was_float and tensor.data_type == onnx.TensorProto.FLOAT16 and uses_external_data(tensor):
            values = np.frombuffer(_tensor_bytes(tensor, Path(src).parent), np.float32)
            tensor.raw_data = convert_np_to_float16(values).tobytes()
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return converted

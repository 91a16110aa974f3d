"""Post-export ONNX rewrite: attention that never materialises the whole (queries × keys) score matrix.

diffusers' SDPA attention traces to `S = MatMul(Q·√s, Kᵀ·√s)` → `P = Softmax(S, axis=-1)` → `O = MatMul(P, V)`
with Q [B, H, N, d]. At 1024 px the shapes model's first UNet level has N = M = 16384 tokens, so S and P are
8·16384² floats (8.6 GB each) and the process was OOM-killed; the VAE mid-block attention is 16384² at 1024 px.

Each such chain is replaced by
    If(n_chunks == 1, then=the original three nodes, else=Loop over query chunks)
where the chunk size is computed inside the graph from the run-time shapes so that one chunk's score block
(B·H·chunk·M elements) stays under `budget_bytes`. Softmax is per row, so chunking the queries is exact (each
output row is computed by the same ops on the same numbers); below the budget the graph runs the original
nodes and is bit-identical to the unchunked export. The padded last chunk (zero query rows) is sliced away.
Only standard ONNX ops (If, Loop, Slice, Pad), so every execution provider runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper, numpy_helper

# One chunk's score block. ORT holds the scores and the softmax output of a chunk at once (≈ 2× this), which
# measured 64 MiB fast enough: 512 px runs as 8 chunks at ~the unchunked speed (see benchmarks/RESULTS.md).
DEFAULT_BUDGET_BYTES = 64 * 2**20
_PREFIX = "/attention_chunking/"
BUDGET_SUFFIX = "score_budget_bytes"
_ELEMENT_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8}


@dataclass(frozen=True)
class ChunkingReport:
    """What the rewrite did to one graph; recorded in the bundle's manifest."""

    attentions: int
    budget_bytes: int

    def to_dict(self) -> dict:
        return {"chunked_attentions": self.attentions, "score_budget_bytes": self.budget_bytes}


@dataclass(frozen=True)
class _Match:
    scores: onnx.NodeProto
    softmax: onnx.NodeProto
    output: onnx.NodeProto
    rank: int
    elem_type: int


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _softmax_axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return attr.i
    return -1


def _find(model: onnx.ModelProto) -> list[_Match]:
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.output[0] in graph_outputs:
            continue
        after = users.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Softmax":
            continue
        softmax = after[0]
        tail = users.get(softmax.output[0], [])
        if softmax.output[0] in graph_outputs or len(tail) != 1 or tail[0].op_type != "MatMul":
            continue
        if tail[0].input[0] != softmax.output[0]:
            continue
        info = types.get(node.input[0])
        if info is None or not info.HasField("shape") or len(info.shape.dim) < 3:
            continue
        rank = len(info.shape.dim)
        if _softmax_axis(softmax) not in (-1, rank - 1) or info.elem_type not in _ELEMENT_BYTES:
            continue
        found.append(_Match(node, softmax, tail[0], rank, info.elem_type))
    return found


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    import numpy as np

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name))


def _rewrite_one(m: _Match, index: int, budget_bytes: int) -> list[onnx.NodeProto]:
    """Nodes computing m.output's output through If(one chunk → original, else → Loop over chunks)."""
    p = f"{_PREFIX}{index}/"
    q, k, v = m.scores.input[0], m.scores.input[1], m.output.input[1]
    out = m.output.output[0]
    r = m.rank
    n = [
        # Shapes: q [..., N, d], k [..., d, M], v [..., M, dv]; the exporter gives q and k the same batch dims.
        helper.make_node("Shape", [q], [p + "q_shape"]),
        helper.make_node("Shape", [k], [p + "k_shape"]),
        helper.make_node("Shape", [v], [p + "v_shape"]),
        _const(p + "c0", [0]), _const(p + "c1", [1]), _const(p + "cm1", [-1]), _const(p + "cm2", [-2]),
        _const(p + "c_end", [2**62]),
        _const(p + BUDGET_SUFFIX, [budget_bytes]), _const(p + "elem_bytes", [_ELEMENT_BYTES[m.elem_type]]),
        helper.make_node("Slice", [p + "q_shape", p + "c0", p + "cm2"], [p + "batch_dims"]),
        helper.make_node("ReduceProd", [p + "batch_dims"], [p + "batch"], keepdims=1),
        helper.make_node("Slice", [p + "q_shape", p + "cm2", p + "cm1"], [p + "n"]),
        helper.make_node("Slice", [p + "k_shape", p + "cm1", p + "c_end"], [p + "m"]),
        helper.make_node("Mul", [p + "batch", p + "m"], [p + "row_elems"]),
        helper.make_node("Mul", [p + "row_elems", p + "elem_bytes"], [p + "row_bytes"]),
        helper.make_node("Div", [p + BUDGET_SUFFIX, p + "row_bytes"], [p + "rows_raw"]),
        helper.make_node("Max", [p + "rows_raw", p + "c1"], [p + "rows_min1"]),
        helper.make_node("Min", [p + "rows_min1", p + "n"], [p + "rows"]),
        # n_chunks = ceil(N / rows); then even out the chunks so the padding is < n_chunks rows.
        helper.make_node("Add", [p + "n", p + "rows"], [p + "n_plus"]),
        helper.make_node("Sub", [p + "n_plus", p + "c1"], [p + "n_plus_m1"]),
        helper.make_node("Div", [p + "n_plus_m1", p + "rows"], [p + "n_chunks"]),
        helper.make_node("Add", [p + "n", p + "n_chunks"], [p + "n_plus2"]),
        helper.make_node("Sub", [p + "n_plus2", p + "c1"], [p + "n_plus2_m1"]),
        helper.make_node("Div", [p + "n_plus2_m1", p + "n_chunks"], [p + "chunk"]),
        helper.make_node("Equal", [p + "n_chunks", p + "c1"], [p + "single_vec"]),
        helper.make_node("Squeeze", [p + "single_vec"], [p + "single"]),
    ]

    # then: the original chain, renamed so both branches can produce `out` under their own names.
    then_nodes = [
        helper.make_node("MatMul", [q, k], [p + "t_scores"]),
        helper.make_node("Softmax", [p + "t_scores"], [p + "t_probs"], axis=-1),
        helper.make_node("MatMul", [p + "t_probs", v], [p + "t_out"]),
    ]
    then_graph = helper.make_graph(then_nodes, p + "then", [],
                                   [helper.make_tensor_value_info(p + "t_out", m.elem_type, None)])

    # else: pad q to n_chunks·chunk rows, loop over chunks (scan output [n_chunks, ..., chunk, dv]), reassemble.
    zeros = [0] * r
    body_nodes = [
        helper.make_node("Mul", [p + "iter", p + "chunk"], [p + "start_s"]),
        helper.make_node("Reshape", [p + "start_s", p + "c1"], [p + "start"]),
        helper.make_node("Add", [p + "start", p + "chunk"], [p + "end"]),
        helper.make_node("Slice", [p + "q_padded", p + "start", p + "end", p + "cm2"], [p + "q_chunk"]),
        helper.make_node("MatMul", [p + "q_chunk", k], [p + "b_scores"]),
        helper.make_node("Softmax", [p + "b_scores"], [p + "b_probs"], axis=-1),
        helper.make_node("MatMul", [p + "b_probs", v], [p + "b_out"]),
        helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"]),
    ]
    body = helper.make_graph(
        body_nodes, p + "body",
        [helper.make_tensor_value_info(p + "iter", TensorProto.INT64, []),
         helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(p + "b_out", m.elem_type, None)],
    )
    perm = [*range(1, r - 1), 0, r - 1, r]  # [n_chunks, *batch, chunk, dv] → [*batch, n_chunks, chunk, dv]
    else_nodes = [
        helper.make_node("Mul", [p + "n_chunks", p + "chunk"], [p + "padded_n"]),
        helper.make_node("Sub", [p + "padded_n", p + "n"], [p + "pad"]),
        _const(p + "pad_head", zeros + [0] * (r - 2)),
        _const(p + "pad_tail", [0]),
        helper.make_node("Concat", [p + "pad_head", p + "pad", p + "pad_tail"], [p + "pads"], axis=0),
        helper.make_node("Pad", [q, p + "pads"], [p + "q_padded"]),
        helper.make_node("Squeeze", [p + "n_chunks"], [p + "trip"]),
        _const(p + "true_i", [1]),
        helper.make_node("Cast", [p + "true_i"], [p + "true_vec"], to=TensorProto.BOOL),
        helper.make_node("Squeeze", [p + "true_vec"], [p + "true"]),
        helper.make_node("Loop", [p + "trip", p + "true"], [p + "chunks"], body=body),
        helper.make_node("Transpose", [p + "chunks"], [p + "chunks_t"], perm=perm),
        helper.make_node("Slice", [p + "v_shape", p + "cm1", p + "c_end"], [p + "dv"]),
        _const(p + "keep", [0] * (r - 2) + [-1]),
        helper.make_node("Concat", [p + "keep", p + "dv"], [p + "joined_shape"], axis=0),
        helper.make_node("Reshape", [p + "chunks_t", p + "joined_shape"], [p + "joined"]),
        helper.make_node("Slice", [p + "joined", p + "c0", p + "n", p + "cm2"], [p + "e_out"]),
    ]
    else_graph = helper.make_graph(else_nodes, p + "else", [],
                                   [helper.make_tensor_value_info(p + "e_out", m.elem_type, None)])
    n.append(helper.make_node("If", [p + "single"], [out], name=p + "If",
                              then_branch=then_graph, else_branch=else_graph))
    return n


def chunk_attention(model: onnx.ModelProto, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> ChunkingReport:
    """Rewrite every MatMul → Softmax → MatMul attention chain of `model` in place; returns what was done."""
    matches = _find(model)
    graph = model.graph
    replaced = {id(x) for m in matches for x in (m.scores, m.softmax, m.output)}
    by_output = {id(m.output): (i, m) for i, m in enumerate(matches)}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in by_output:
            i, m = by_output[id(node)]
            nodes.extend(_rewrite_one(m, i, budget_bytes))
        elif id(node) not in replaced:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return ChunkingReport(attentions=len(matches), budget_bytes=budget_bytes)


def chunk_attention_file(path, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> dict:
    """Rewrite an exported .onnx file in place; the returned dict goes into the manifest's `io` entry.

    Weights stored as external data (models over 2 GiB, e.g. SD 1.5's UNet) stay where they are: only the graph
    is read and written (atomically), its initializers keep pointing at the same file(s), so whatever layout the
    weights have (torch's file per tensor, the bundle's one model.onnx_data, export/onnx_layout.py) is kept."""
    from export.onnx_layout import replace_graph

    model = onnx.load(str(path), load_external_data=False)
    report = chunk_attention(model, budget_bytes)
    if report.attentions:
        replace_graph(model, path)
        onnx.checker.check_model(str(path))  # by path: external data is looked up beside the model
    return report.to_dict()


def set_budget(model: onnx.ModelProto, budget_bytes: int) -> int:
    """Change the score budget of an already rewritten model in place (tests force several chunks at small
    sizes, or the original nodes everywhere with a huge budget); returns how many attentions it changed."""
    import numpy as np

    changed = 0
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0].startswith(_PREFIX) and node.output[0].endswith(
                "/" + BUDGET_SUFFIX):
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([budget_bytes], np.int64)))
            changed += 1
    return changed

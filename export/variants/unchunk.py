"""Undo export/attention_chunking.py: every `If(one chunk → MatMul→Softmax→MatMul, else → Loop over query
chunks)` back to the plain three-node attention.

The GPU variants need the plain chain: TensorRT supports Loop poorly (and its Myelin backend recognises
MatMul→Softmax→MatMul as multi-head attention only in that form), and ONNX Runtime's transformer optimizer fuses
that chain into `MultiHeadAttention`. Both run attention as fused flash/memory-efficient kernels that never
materialise the whole score matrix, which is what the chunking bounds on the CPU. The `then` branch of each If is
exactly the original nodes, so the result is the unchunked export; the dead shape arithmetic that fed the If is
left for the caller's cleanup (graphsurgeon's `cleanup`, ONNX Runtime's optimizer).
"""

from __future__ import annotations

import onnx
from onnx import helper

from export.attention_chunking import _PREFIX


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    for attr in node.attribute:
        if attr.name == name:
            return attr.g
    raise ValueError(f"{node.name}: no {name}")


def unchunk_attention(model: onnx.ModelProto) -> int:
    """Replace every chunked attention of `model`'s main graph in place; returns how many were replaced."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    for node in graph.node:
        if node.op_type != "If" or not node.name.startswith(_PREFIX):
            nodes.append(node)
            continue
        then = _branch(node, "then_branch")
        produced = then.output[0].name
        for inner in then.node:
            outputs = [node.output[0] if out == produced else out for out in inner.output]
            copy = helper.make_node(inner.op_type, list(inner.input), outputs, name=f"{node.name}/{inner.op_type}"
                                    f"_{len(nodes)}")
            copy.attribute.extend(inner.attribute)
            nodes.append(copy)
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced

"""Seamless tiling on the OpenVINO backend: engine/tiling.py's circular-padding rewrite, on an ov.Model.

ONNX Runtime runs the rewritten ONNX graph from memory beside the bundle's weight files; OpenVINO reads an ONNX
model's external data only from the model file's own folder (a graph written elsewhere, its weights linked in, is
refused as a path outside the base directory), and a read-only bundle cannot take the graph. So the same rewrite is
made on the model OpenVINO read (from the ONNX or the f16 IR): every 2-D convolution with padding gets its input
wrapped by Slice + Concat along H and W (the last `before` rows first, the first `after` rows last; then the
columns) and loses its padding; unpadded convolutions (1×1, the VAE encoder's explicitly padded Downsample) stay.
"""

from __future__ import annotations

import numpy as np

from engine.tiling import CIRCULAR, TilingUnsupported

_CONVOLUTIONS = ("Convolution", "GroupConvolution")
_INT64_MAX = np.iinfo(np.int64).max


def derive(model, variant: str) -> int:
    """`model` (in place) as the graph `variant` of its component names; the convolutions changed."""
    if variant != CIRCULAR:
        raise ValueError(f"unknown graph variant {variant!r}")
    return circular_padding(model)


def circular_padding(model) -> int:
    """Every padded 2-D convolution of `model` (in place) circularly padded; how many were changed."""
    import openvino.opset13 as ops

    def const(values: list[int]):
        return ops.constant(np.array(values, dtype=np.int64))

    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() not in _CONVOLUTIONS:
            continue
        attributes = node.get_attributes()
        begin, end = list(attributes["pads_begin"]), list(attributes["pads_end"])
        if not any(begin) and not any(end):
            continue
        if attributes.get("auto_pad", "explicit") not in ("explicit", "notset") or len(begin) != 2:
            raise TilingUnsupported(f"{node.get_friendly_name()}: padding {attributes.get('auto_pad')} "
                                    f"over {len(begin)} axes")
        x = node.input_value(0)
        for axis, (before, after) in enumerate(zip(begin, end, strict=True), start=2):
            parts = []
            if before:
                parts.append(ops.slice(x, const([-before]), const([_INT64_MAX]), const([1]), const([axis])).output(0))
            parts.append(x)
            if after:
                parts.append(ops.slice(x, const([0]), const([after]), const([1]), const([axis])).output(0))
            if len(parts) > 1:
                x = ops.concat(parts, axis).output(0)
        node.input(0).replace_source_output(x)
        node.set_attribute("pads_begin", [0, 0])
        node.set_attribute("pads_end", [0, 0])
        count += 1
    model.validate_nodes_and_infer_types()
    return count

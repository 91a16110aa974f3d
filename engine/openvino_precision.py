"""Ops that OpenVINO's CPU plugin must keep in f32 when a model runs with INFERENCE_PRECISION_HINT=bf16.

Why: with the bf16 hint the CPU plugin stores every float tensor of the graph in bf16 (8 significant bits), not
only the convolution/MatMul inputs. The UNet's sinusoidal timestep embedding does not survive that: t = 999 is
stored as 1000 (bf16 step 4 near 1000), `t·freq` is off by up to 1 rad from that alone (1.8 rad with its own
rounding), so sin/cos of the high frequencies are noise; the f16 IR the backend compiles from
(engine/openvino_backend.py) also stored `freq` in f16, up to 0.21 rad more at t = 999. On the full-size SD 1.5
that was the whole quality-gate failure: per-call cosine 0.998533 → 0.999929 with this path kept f32; keeping
GroupNorm statistics, softmax or the last conv f32 as well changed nothing measurable, so they stay bf16.
diffusers keeps the path in f32 in its half-precision UNets (`get_timestep_embedding` works on
`timesteps.float()`; its bf16 UNet scores 0.999922 against its fp32 on the same inputs) and so does our fp16
variant (export/variants/fp16.py): every node from `timestep` (SDXL: `time_ids`) up to the first MatMul,
`time_embedding.linear_1`, which then runs in bf16 like every other linear layer.

How: OpenVINO's "precise" runtime attribute (`ov::disable_fp16_compression`; OpenVINO 2026.4 reads it as
`DisablePrecisionConversion_0`) on a node. The CPU plugin leaves such a node at its original precision
(`Node::keepOrigPrecision`), and `save_model(compress_to_fp16=True)` leaves such a Constant in f32. The Python API
cannot build the attribute (RTMap takes strings and ints only), so it is read from a two-layer IR that carries it
and copied onto the nodes with `Node.set_rt_info`, which keeps its type. The mark is not copied when the plugin
replaces a node (Unsqueeze → its Reshape), so on the static model the backend compiles those nodes are replaced
first with ones it keeps (`_stable_replacement`). Measurements: benchmarks/RESULTS.md, "OpenVINO bf16 precision".
"""

from __future__ import annotations

from functools import cache

import numpy as np

TIME_INPUTS = ("timestep", "time_ids")
_LINEAR = {"MatMul"}
_RESHAPES = {"Reshape", "Unsqueeze", "Squeeze"}

# A Parameter marked "precise" in IR v11: the only way to obtain the attribute object from Python.
_DONOR_IR = """<?xml version="1.0"?>
<net name="precise" version="11"><layers>
<layer id="0" name="x" type="Parameter" version="opset1"><data shape="1" element_type="f32"/>
<rt_info><attribute name="precise" version="0"/></rt_info>
<output><port id="0" precision="FP32"><dim>1</dim></port></output></layer>
<layer id="1" name="y" type="Result" version="opset1"><input><port id="0" precision="FP32"><dim>1</dim></port></input>
</layer></layers><edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/></edges></net>"""


@cache
def _precise_attribute() -> tuple[str, object]:
    """(rt_info key, attribute) of OpenVINO's "precise" mark, as this OpenVINO version names it."""
    import openvino as ov

    donor = ov.Core().read_model(_DONOR_IR, ov.Tensor(np.empty(0, np.uint8)))
    rt_info = donor.get_parameters()[0].get_rt_info()
    keys = list(rt_info.keys())
    if len(keys) != 1:
        raise RuntimeError(f"OpenVINO did not read the 'precise' attribute (rt_info keys {keys})")
    return keys[0], rt_info[keys[0]]


def keep_f32(nodes) -> int:
    """Mark `nodes` (ov.Node) to run and be stored at their original (f32) precision; returns how many."""
    key, value = _precise_attribute()
    count = 0
    for node in nodes:
        if key not in node.get_rt_info():
            node.set_rt_info(value, key)
            count += 1
    return count


def _constant_inputs(node) -> list:
    """The Constants feeding `node`, with the Convert between (an f16 IR's decompression of an f32 constant)."""
    found = []
    for port in node.inputs():
        source = port.get_source_output().get_node()
        if source.get_type_name() == "Convert" and source.input_value(0).get_node().get_type_name() == "Constant":
            found += [source, source.input_value(0).get_node()]
        elif source.get_type_name() == "Constant":
            found.append(source)
    return found


def timestep_path(model) -> list:
    """The nodes computing from the time inputs up to (not including) the first MatMul, with their Constants."""
    frontier = [p for p in model.get_parameters() if p.get_friendly_name() in TIME_INPUTS]
    found: dict[str, object] = {}
    while frontier:
        node = frontier.pop()
        for output in node.outputs():
            for target in output.get_target_inputs():
                user = target.get_node()
                if user.get_type_name() in _LINEAR or user.get_friendly_name() in found:
                    continue
                found[user.get_friendly_name()] = user
                frontier.append(user)
    nodes = list(found.values())
    for node in list(nodes):
        nodes += [c for c in _constant_inputs(node) if c.get_friendly_name() not in found]
    return nodes


def _stable_replacement(node):
    """A Reshape for `node` (Unsqueeze/Squeeze, a Broadcast that only reshapes; a Multiply by ones for a real
    Broadcast) when its shapes are static, else None. The CPU plugin replaces Unsqueeze/Squeeze/Broadcast with
    new nodes of its own, which do not inherit the mark (it is not copyable): t = 999 reached the Mul as bf16 1000.
    A Reshape or Multiply keeps it. A reshape straight after another reshape reads that one's input instead:
    the plugin fuses two consecutive Reshapes into a new, unmarked one (SDXL's `time_ids` → Reshape → Unsqueeze
    reached its Mul as bf16)."""
    import openvino.opset13 as ops

    if not (node.get_input_partial_shape(0).is_static and node.get_output_partial_shape(0).is_static):
        return None
    shape = list(node.get_output_shape(0))
    source = node.input_value(0)
    if int(np.prod(shape)) == int(np.prod(list(node.get_input_shape(0)))):
        while (source.get_node().get_type_name() in _RESHAPES and len(source.get_target_inputs()) == 1
               and source.get_node().get_input_partial_shape(0).is_static):
            source = source.get_node().input_value(0)  # the same element count all along the chain
        replacement = ops.reshape(source, ops.constant(np.array(shape, np.int64)), special_zero=False)
    elif node.get_type_name() == "Broadcast":  # one timestep for the whole batch: an elementwise broadcast
        replacement = ops.multiply(source, ops.constant(np.ones(shape, source.get_element_type().to_dtype())))
    else:
        return None
    replacement.set_friendly_name(node.get_friendly_name())
    return replacement


def keep_timestep_f32(model) -> int:
    """Mark the timestep-embedding path of `model` (ov.Model) f32; returns how many nodes were newly marked.

    On a model with static shapes (the backend reshapes before compiling), the path's Unsqueeze/Squeeze and
    Broadcast nodes are also replaced with marked nodes the plugin keeps (see `_stable_replacement`)."""
    marked = 0
    for node in timestep_path(model):
        if node.get_type_name() in ("Unsqueeze", "Squeeze", "Broadcast"):
            replacement = _stable_replacement(node)
            if replacement is not None and node.get_output_element_type(0) == replacement.get_output_element_type(0):
                node.output(0).replace(replacement.output(0))
                marked += keep_f32([replacement, replacement.input_value(1).get_node()])
                continue
        marked += keep_f32([node])
    return marked

"""The TensorRT-ready graph of a component: demoDiffusion's ONNX pass, fp32.

NVIDIA's demo (`demo/Diffusion/demo_diffusion/model/optimizer.py`, `BaseModel.optimize`) and the A1111 TensorRT
extension hand TensorRT a clean graph and let its Myelin backend do the fusions: graphsurgeon cleanup + toposort,
Polygraphy constant folding (with ONNX Runtime shape inference), ONNX shape inference, cleanup again. Dynamic axes
stay dynamic (batch, height, width, tokens): the engine's optimisation profiles give their ranges, and only
shape arithmetic on static dimensions folds away. Attention is unchunked first (export/variants/unchunk.py):
TensorRT's Loop support is poor, and its attention fusion needs the plain MatMul→Softmax→MatMul chain.

Precision: the graph stays fp32 and the engine is built with the FP16 builder flag (weakly typed, as the A1111
extension does; TensorRT picks fp16 kernels where its own accuracy rules allow). The fp16 variant's graph can be
built strongly typed instead (demoDiffusion's choice); which one is a build-time decision of the runtime side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from export.variants.unchunk import unchunk_attention

# protobuf's limit: bigger models go through a file for shape inference.
_PROTO_LIMIT = 2**31 - 1


def _cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    if model.ByteSize() < _PROTO_LIMIT:
        return onnx.shape_inference.infer_shapes(model)
    with tempfile.TemporaryDirectory(prefix="sdedge-trt-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        onnx.save_model(model, str(src), save_as_external_data=True, location="model.onnx_data")
        onnx.shape_inference.infer_shapes_path(str(src), str(dst))
        inferred = onnx.load(str(dst))
    return inferred


def sanitize(model: onnx.ModelProto) -> onnx.ModelProto:
    """`polygraphy surgeon sanitize --cleanup --toposort --fold-constants` through Polygraphy's API, then ONNX
    shape inference and a last cleanup (demoDiffusion's order)."""
    from polygraphy.backend.onnx import fold_constants

    model = _cleanup(model)
    model = fold_constants(model, num_passes=None, allow_onnxruntime_shape_inference=True, error_ok=False)
    model = _infer_shapes(model)
    return _cleanup(model)


def trt_ready(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(the TensorRT-ready graph, how many chunked attentions were unchunked)."""
    unchunked = unchunk_attention(model)
    return sanitize(model), unchunked

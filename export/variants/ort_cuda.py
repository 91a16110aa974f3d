"""The ONNX Runtime CUDA graph of a component: ORT's transformer optimizer with its Stable Diffusion fusions, then
fp16, as `onnxruntime/transformers/models/stable_diffusion/optimize_pipeline.py` does.

Model types unet/vae/clip; fusion options are `FusionOptions(model_type)`'s defaults for those (attention →
MultiHeadAttention, NhwcConv, GroupNorm channels-last, SkipGroupNorm, BiasSplitGelu, SkipLayerNorm, Gelu), and for
the UNet packed QKV, packed KV and BiasAdd, which the tooling enables together with fp16. Fusion runs on the fp32
graph (its patterns match fp32 only), on the unchunked attention (export/variants/unchunk.py: the fused kernels
never materialise the score matrix). The fp16 conversion keeps fp32 IO and the fp32 timestep embedding as the fp16
variant does (export/variants/fp16.py); an SDXL VAE stays fp32 ("would cause NaN", the tooling says).

The result holds com.microsoft contrib ops with CUDA (and ROCm) kernels only: it is never loaded on the CPU or
by TensorRT, and its gate runs on a GPU.
"""

from __future__ import annotations

import onnx

from export.variants.fp16 import (
    drop_duplicate_nodes,
    io_signature,
    name_nodes,
    restore_io,
    timestep_path_nodes,
    toposorted,
)
from export.variants.unchunk import unchunk_attention

MODEL_TYPES = {"unet": "unet", "vae_encoder": "vae", "vae_decoder": "vae", "text_encoder": "clip",
               "text_encoder_2": "clip"}


def _num_heads_numpy2(self, reshape_q, is_torch2: bool = False) -> int:
    """ORT 1.31's `FusionAttentionUnet.get_num_heads` with `int()` of a one-element array made NumPy-2-safe (NumPy
    2.4 refuses `int()` of a 1-d array; ORT's version raised TypeError on every torch-2 exported UNet)."""
    import numpy as np

    if is_torch2:
        parent = self.model.get_parent(reshape_q, 1)
        if parent is None or parent.op_type != "Concat" or len(parent.input) != 4:
            return 0
        value = self.model.get_constant_value(parent.input[2])
    else:
        shape = self.model.get_constant_value(reshape_q.input[1])
        value = shape[2:3] if isinstance(shape, np.ndarray) and list(shape.shape) == [4] else None
    if not isinstance(value, np.ndarray) or value.size != 1:
        return 0
    return max(int(value.reshape(-1)[0]), 0)


def ort_cuda(model: onnx.ModelProto, component: str, float16: bool = True) -> tuple[onnx.ModelProto, dict]:
    """(the optimised graph, its fused-operator counts)."""
    import importlib

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # ORT's optimizer imports its fusions as top-level modules (onnxruntime/transformers/__init__.py puts its
    # folder on sys.path): patch the class that module holds.
    for module in ("fusion_attention_unet", "onnxruntime.transformers.fusion_attention_unet"):
        importlib.import_module(module).FusionAttentionUnet.get_num_heads = _num_heads_numpy2
    signature = io_signature(model)
    unchunk_attention(model)
    model_type = MODEL_TYPES[component]
    options = FusionOptions(model_type)
    if model_type == "unet":
        options.enable_packed_kv = float16
        options.enable_packed_qkv = float16
        options.enable_bias_add = True
    optimized = optimize_model(model, model_type=model_type, num_heads=0, hidden_size=0, opt_level=0,
                               optimization_options=options, use_gpu=True, provider="cuda")
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    result = optimized.model
    if float16:
        name_nodes(result)
        blocked = timestep_path_nodes(result)
        optimized.convert_float_to_float16(keep_io_types=True, op_block_list=[], node_block_list=blocked)
        result = optimized.model
        drop_duplicate_nodes(result)
        result = toposorted(result)
        restore_io(result, signature)
    # The symbolic shape inference of the fp16 pass leaves value_infos with a type and no shape, which the
    # checker refuses; they are optional (ORT infers its own).
    del result.graph.value_info[:]
    return result, fused


def contrib_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of `model` outside the standard ONNX domains."""
    return sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})

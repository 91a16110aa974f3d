"""Chunked attention (export/attention_chunking.py): exact against the unchunked graph and against torch.

The shapes bundle is exported with the rewrite. `set_budget` moves the in-graph budget: 2**62 makes every
attention take its original nodes (the unchunked graph), a small budget forces several query chunks at a small
size, so the loop path is exercised without a 1024 px run.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.attention_chunking import DEFAULT_BUDGET_BYTES, chunk_attention, set_budget

UNCHUNKED = 2**62
SMALL_BUDGET = 256 * 1024  # 8 chunks per UNet self-attention at 128 px, 16 for the VAE's mid-block at 256 px


def session(model: onnx.ModelProto, budget: int) -> ort.InferenceSession:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    assert set_budget(model, budget) > 0
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def unet_feeds(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    h = size // 8
    return {"sample": rng.standard_normal((2, 4, h, h), dtype=np.float32),
            "timestep": np.array([700.0, 35.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}


def test_manifest_records_the_rewrite(shapes_bundle):
    io = json.loads((shapes_bundle / "manifest.json").read_text())["io"]
    # 7 transformer blocks × (self + cross) in the UNet, one mid-block attention in each VAE half.
    assert io["unet"]["attention"] == {"chunked_attentions": 14, "score_budget_bytes": DEFAULT_BUDGET_BYTES}
    assert io["vae_decoder"]["attention"]["chunked_attentions"] == 1
    assert io["vae_encoder"]["attention"]["chunked_attentions"] == 1
    ops = {n.op_type for n in onnx.load(str(shapes_bundle / "unet" / "model.onnx")).graph.node}
    assert "Softmax" not in ops and {"If"} <= ops  # every softmax moved into the If/Loop


def bare_attention(scale: np.ndarray | None = None) -> onnx.ModelProto:
    """softmax((q·scale) k) v as the exporter emits it; with `scale`, an initializer (weights) in the graph."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["qs", "k"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"])]
    scale = np.ones((1,), np.float32) if scale is None else scale
    nodes.insert(0, helper.make_node("Mul", ["q", "scale"], ["qs"]))
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 4, "n", 8])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 4, 8, "n"])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 4, "n", 8])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [2, 4, "n", 8])
    graph = helper.make_graph(nodes, "attn", [q, k, v], [out],
                              initializer=[onnx.numpy_helper.from_array(scale, "scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_rewrite_keeps_external_weights(tmp_path):
    """Models over 2 GiB (SD 1.5's UNet) keep their weights in external files; the rewrite leaves them there."""
    from export.attention_chunking import chunk_attention_file

    scale = np.full((1,), 0.5, np.float32)
    onnx.save(bare_attention(scale), str(tmp_path / "model.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    assert chunk_attention_file(tmp_path / "model.onnx", budget_bytes=4096)["chunked_attentions"] == 1
    rng = np.random.default_rng(1)
    feeds = {"q": rng.standard_normal((2, 4, 64, 8), dtype=np.float32),
             "k": rng.standard_normal((2, 4, 8, 64), dtype=np.float32),
             "v": rng.standard_normal((2, 4, 64, 8), dtype=np.float32)}
    s = (feeds["q"] * 0.5) @ feeds["k"]
    p = np.exp(s - s.max(-1, keepdims=True))
    got = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, (p / p.sum(-1, keepdims=True)) @ feeds["v"], atol=1e-5, rtol=1e-5)


def test_bare_attention_in_uneven_chunks_matches_numpy():
    """One attention, chunked into 11 chunks with a padded last one, against softmax(QKᵀ)V in NumPy."""
    from onnx import TensorProto, helper

    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 4, "n", 8])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 4, 8, "n"])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 4, "n", 8])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [2, 4, "n", 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["q", "k"], ["s"]),
                               helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                               helper.make_node("MatMul", ["p", "v"], ["o"])], "attn", [q, k, v], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    n = 1000  # 8 heads·batch × 1000 keys × 4 B = 32000 B per query row
    report = chunk_attention(model, budget_bytes=32000 * 96)  # 96 rows per chunk → 11 chunks, padded to 1001
    assert report.attentions == 1
    onnx.checker.check_model(model)
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((2, 4, n, 8), dtype=np.float32),
             "k": rng.standard_normal((2, 4, 8, n), dtype=np.float32),
             "v": rng.standard_normal((2, 4, n, 8), dtype=np.float32)}
    s = feeds["q"] @ feeds["k"]
    p = np.exp(s - s.max(-1, keepdims=True))
    expected = (p / p.sum(-1, keepdims=True)) @ feeds["v"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [SMALL_BUDGET, 1])  # 1 byte: one query row per chunk
@pytest.mark.slow
def test_unet_chunked_equals_unchunked(shapes_bundle, budget):
    model = onnx.load(str(shapes_bundle / "unet" / "model.onnx"))
    feeds = unet_feeds(128)
    whole = session(model, UNCHUNKED).run(None, feeds)[0]
    chunked = session(model, budget).run(None, feeds)[0]
    assert np.abs(chunked - whole).max() <= 1e-5


def test_vae_decoder_chunked_equals_unchunked(shapes_bundle):
    model = onnx.load(str(shapes_bundle / "vae_decoder" / "model.onnx"))
    feeds = {"latent_sample": np.random.default_rng(3).standard_normal((1, 4, 32, 32), dtype=np.float32)}
    whole = session(model, UNCHUNKED).run(None, feeds)[0]
    chunked = session(model, SMALL_BUDGET).run(None, feeds)[0]
    assert np.abs(chunked - whole).max() <= 1e-5


@pytest.mark.slow
def test_below_budget_is_bit_identical(shapes_bundle):
    """Below the shipped budget the If takes the original nodes: the same bits as the unchunked graph."""
    model = onnx.load(str(shapes_bundle / "unet" / "model.onnx"))
    feeds = unet_feeds(64)
    shipped = ort.InferenceSession(str(shapes_bundle / "unet" / "model.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.array_equal(shipped, session(model, UNCHUNKED).run(None, feeds)[0])


@pytest.mark.slow
def test_chunked_unet_matches_torch(shapes_bundle):
    """The independent reference: diffusers' UNet on the same weights, with the graph forced into chunks."""
    import torch

    from export.shapes import build_shapes_pipeline

    torch.set_num_threads(1)
    unet = build_shapes_pipeline().unet
    feeds = unet_feeds(128)
    with torch.no_grad():
        expected = unet(torch.from_numpy(feeds["sample"]), torch.from_numpy(feeds["timestep"]),
                        torch.from_numpy(feeds["encoder_hidden_states"])).sample.numpy()
    model = onnx.load(str(shapes_bundle / "unet" / "model.onnx"))
    chunked = session(model, SMALL_BUDGET).run(None, feeds)[0]
    np.testing.assert_allclose(chunked, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.fullsize
def test_shipped_budget_chunks_exactly_at_768px(shapes_bundle):
    """At 768 px the shipped 64 MiB budget itself splits the UNet's (6 chunks) and the VAE's attention."""
    unet = onnx.load(str(shapes_bundle / "unet" / "model.onnx"))
    feeds = unet_feeds(768)
    shipped = ort.InferenceSession(str(shapes_bundle / "unet" / "model.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(shipped - session(unet, UNCHUNKED).run(None, feeds)[0]).max() <= 1e-5
    vae = onnx.load(str(shapes_bundle / "vae_decoder" / "model.onnx"))
    latents = {"latent_sample": np.random.default_rng(5).standard_normal((1, 4, 96, 96), dtype=np.float32)}
    shipped = ort.InferenceSession(str(shapes_bundle / "vae_decoder" / "model.onnx"),
                                   providers=["CPUExecutionProvider"]).run(None, latents)[0]
    assert np.abs(shipped - session(vae, UNCHUNKED).run(None, latents)[0]).max() <= 1e-5

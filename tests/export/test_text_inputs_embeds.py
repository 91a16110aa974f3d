"""Text encoders exported with `inputs_embeds` (export/text_inputs_embeds.py): the token table beside the graph,
not inside it, and the graph equal to transformers' model whose token-embedding output is replaced (as A1111's
EmbeddingsWithFixes replaces it) — all three outputs, the pooled one included."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bundle import load_bundle

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


def test_token_table_ships_beside_the_graph_not_in_it(demo_bundle, torch_pipeline):
    manifest = load_bundle(demo_bundle).manifest
    assert manifest.text_token_tables == {"text_encoder": "text_encoder/token_embeddings.npy"}
    table = np.load(demo_bundle / manifest.text_token_tables["text_encoder"])
    weight = torch_pipeline.text_encoder.text_model.embeddings.token_embedding.weight.detach().numpy()
    assert table.dtype == np.float32
    np.testing.assert_array_equal(table, weight)
    model = onnx.load(str(demo_bundle / "text_encoder" / "model.onnx"), load_external_data=False)
    assert all(tuple(t.dims) != weight.shape for t in model.graph.initializer)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {"input_ids": ["batch", "sequence"], "inputs_embeds": ["batch", "sequence", 32]}


def test_graph_with_replaced_rows_equals_torch(demo_bundle, torch_pipeline):
    import onnxruntime as ort

    encoder = torch_pipeline.text_encoder
    ids = np.full((2, 77), 49407, dtype=np.int64)
    ids[:, 0] = 49406
    ids[0, 1:6] = [320, 0, 0, 0, 1929]  # "a", three placeholders, "dog"
    ids[1, 1:3] = [0, 0]
    rows = (np.random.default_rng(0).standard_normal((2, 3, 32)) * 0.5).astype(np.float32)
    table = np.load(demo_bundle / "text_encoder" / "token_embeddings.npy", mmap_mode="r")
    embeds = np.array(table[ids])
    embeds[0, 2:5] = rows[0]
    embeds[1, 1:3] = rows[1, :2]
    session = ort.InferenceSession(str(demo_bundle / "text_encoder" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    last, pooled, normed = session.run(None, {"input_ids": ids, "inputs_embeds": embeds})

    def replace(_module, _inputs, output):
        return torch.from_numpy(embeds)

    handle = encoder.text_model.embeddings.token_embedding.register_forward_hook(replace)
    try:
        with torch.no_grad():
            ref = encoder(torch.from_numpy(ids), output_hidden_states=True)
            ref_normed = np.stack([encoder.text_model.final_layer_norm(h).numpy() for h in ref.hidden_states[1:]],
                                  axis=1)
    finally:
        handle.remove()
    np.testing.assert_allclose(last, ref.last_hidden_state.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(normed, ref_normed, atol=1e-5, rtol=0)
    with torch.no_grad():
        plain = encoder(torch.from_numpy(ids)).pooler_output.numpy()
    assert np.abs(plain - pooled).max() > 1e-3  # the replaced rows reach the pooled output


def test_export_puts_the_token_embedding_back_whatever_happens():
    from transformers import CLIPTextConfig, CLIPTextModel

    from export.text_inputs_embeds import export_text_encoder

    model = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=50))
    original = model.text_model.embeddings.token_embedding
    seen = []

    def failing_export(module, args, path, inputs, outputs, threshold):
        seen.append((type(model.text_model.embeddings.token_embedding).__name__, list(inputs), len(args)))
        raise RuntimeError("trace failed")

    with pytest.raises(RuntimeError):
        export_text_encoder(failing_export, model, model, torch.zeros((1, 77), dtype=torch.int64),
                            None, {0: "batch"}, {}, None)
    assert seen == [("TokenRows", ["input_ids", "inputs_embeds"], 2)]
    assert model.text_model.embeddings.token_embedding is original

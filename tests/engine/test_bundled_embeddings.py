"""Textual-inversion embeddings bundled in a LoRA file (`bundle_emb.*`, A1111 extensions-builtin/Lora/networks.py:
load_network, load_networks): how the keys are read, and that a pass's pipeline with them encodes a prompt exactly
as the independent reference of tests/engine/test_textual_inversion.py does with the same vectors, while the
model's own pipeline never sees them. Files are written with safetensors' own numpy writer and torch.save."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.lora import NetworkError, NetworkUse, load_network
from engine.network_sessions import ModelNetworks
from engine.textual_inversion import Embedding
from tests.engine.test_textual_inversion import (
    ATOL,
    NO_NORM,
    THREE,
    TWO,
    encode,
    pipeline,  # noqa: F401 (fixture)
    reference,  # noqa: F401 (fixture)
    reference_encode,
    sdxl,  # noqa: F401 (fixture)
    sdxl_reference,
    vectors,
)

torch = pytest.importorskip("torch")

LORA_DOWN = np.full((4, 32), 0.01, np.float32)
LORA_UP = np.full((32, 4), 0.01, np.float32)
MODULE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def test_sd1_keys_become_an_embedding_beside_the_modules(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({f"{MODULE}.lora_down.weight": LORA_DOWN, f"{MODULE}.lora_up.weight": LORA_UP,
               "bundle_emb.sksdog.string_to_param.*": TWO,
               "bundle_emb.onevec.string_to_param.*": THREE[0]}, path)
    network = load_network(path)
    assert list(network.modules) == [MODULE]  # the embedding keys are no module
    assert sorted(network.embeddings) == ["onevec", "sksdog"]
    sksdog = network.embeddings["sksdog"]
    assert sksdog.name == "sksdog" and sksdog.filename == f"{path}/sksdog"
    np.testing.assert_array_equal(sksdog.vectors["text_encoder"], TWO)
    np.testing.assert_array_equal(network.embeddings["onevec"].vectors["text_encoder"], THREE[:1])  # unsqueezed
    assert sksdog.shorthash == "" and sksdog.network == ""  # named after the LoRA by the service, per use


def test_sdxl_keys_give_both_encoders_vectors(tmp_path):
    clip_l, clip_g = vectors(2, 768, seed=5), vectors(2, 1280, seed=6)
    path = tmp_path / "xl.safetensors"
    save_file({"bundle_emb.xlthing.clip_l": clip_l.astype(np.float16), "bundle_emb.xlthing.clip_g": clip_g}, path)
    embedding = load_network(path).embeddings["xlthing"]
    np.testing.assert_array_equal(embedding.vectors["text_encoder"], clip_l.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(embedding.vectors["text_encoder_2"], clip_g)
    assert embedding.n_vectors == 2


def test_torch_files_and_a_lone_tensor(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"bundle_emb.lone.emb_params": torch.from_numpy(THREE), f"{MODULE}.alpha": torch.tensor(4.0),
                f"{MODULE}.lora_down.weight": torch.from_numpy(LORA_DOWN),
                f"{MODULE}.lora_up.weight": torch.from_numpy(LORA_UP)}, path)
    np.testing.assert_array_equal(load_network(path).embeddings["lone"].vectors["text_encoder"], THREE)


@pytest.mark.parametrize(("keys", "message"), [
    ({"bundle_emb.twoterms.a": TWO, "bundle_emb.twoterms.b": TWO}, "multiple terms"),
    ({"bundle_emb.noname": TWO}, "bundle_emb.<name>.<vectors>"),
    ({"bundle_emb.x.string_to_param": TWO}, "bundle_emb.<name>.<vectors>"),
    ({"bundle_emb.xl.clip_l": vectors(2, 768, 1), "bundle_emb.xl.clip_g": vectors(3, 1280, 1)}, "different numbers"),
])
def test_a_bundle_that_is_no_embedding_fails_the_file(tmp_path, keys, message):
    """A1111's load_network raises, and the network is not loaded at all."""
    path = tmp_path / "bad.safetensors"
    save_file(keys, path)
    with pytest.raises(NetworkError, match=message):
        load_network(path)


def test_the_last_string_to_param_key_wins(tmp_path):
    path = tmp_path / "two.safetensors"
    save_file({"bundle_emb.t.string_to_param.a": TWO, "bundle_emb.t.string_to_param.b": THREE}, path)
    np.testing.assert_array_equal(load_network(path).embeddings["t"].vectors["text_encoder"], THREE)


def test_a_pass_with_bundled_embeddings_encodes_as_the_reference(pipeline, reference):  # noqa: F811
    pipeline.set_embeddings({})
    bundled = pipeline.with_bundled_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    expected, _ = reference_encode(*reference, [("a sksdog on grass", 1.0)], {"sksdog": TWO})
    np.testing.assert_allclose(encode(bundled, "a sksdog on grass"), expected, atol=ATOL, rtol=0)
    assert [e.name for e in bundled.embeddings_used(["a sksdog on grass"])] == ["sksdog"]
    # The model's own pipeline (and every other pass on it) keeps the plain text.
    plain, _ = reference_encode(*reference, [("a sksdog on grass", 1.0)], {})
    np.testing.assert_allclose(encode(pipeline, "a sksdog on grass"), plain, atol=ATOL, rtol=0)
    assert pipeline.embeddings_used(["a sksdog on grass"]) == ()
    assert bundled.embedding_table.token_table("text_encoder") is pipeline.embedding_table.token_table("text_encoder")
    tiled = bundled.tiled()  # a tiling plan's view of the pass keeps its embeddings
    assert tiled.embedding_table is bundled.embedding_table and tiled.bundled_embeddings == bundled.bundled_embeddings
    assert pipeline.tiled().embedding_table is pipeline.embedding_table


def test_a_file_of_the_same_name_wins_and_the_others_stay(pipeline, reference):  # noqa: F811
    bundled = pipeline.with_bundled_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO}),
                                                "zzcat": Embedding("zzcat", {"text_encoder": TWO})})
    bundled.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": THREE}, shorthash="file")})
    expected, _ = reference_encode(*reference, [("sksdog and zzcat", 1.0)], {"sksdog": THREE, "zzcat": TWO})
    np.testing.assert_allclose(encode(bundled, "sksdog and zzcat"), expected, atol=ATOL, rtol=0)
    assert [e.shorthash for e in bundled.embeddings_used(["sksdog zzcat"])] == ["file", ""]
    bundled.set_embeddings({})  # the file is gone: the bundled one is used again
    expected, _ = reference_encode(*reference, [("sksdog", 1.0)], {"sksdog": TWO})
    np.testing.assert_allclose(encode(bundled, "sksdog"), expected, atol=ATOL, rtol=0)


def test_a_bundled_embedding_of_another_width_stays_text(pipeline, reference):  # noqa: F811
    bundled = pipeline.with_bundled_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": vectors(2, 768, 3)})})
    plain, _ = reference_encode(*reference, [("a sksdog", 1.0)], {})
    np.testing.assert_allclose(encode(bundled, "a sksdog"), plain, atol=ATOL, rtol=0)
    assert bundled.embeddings_used(["a sksdog"]) == ()


def test_a_file_of_embeddings_only_changes_no_weight(pipeline, tmp_path):  # noqa: F811
    """No module to merge: the model's own sessions, and no weight map needed (A1111 loads such a network)."""
    path = tmp_path / "only.safetensors"
    save_file({"bundle_emb.sksdog.string_to_param.*": TWO}, path)
    network = load_network(path)
    assert network.modules == {}
    assert ModelNetworks(pipeline).pipeline_for([(network, NetworkUse("only"), "only")])[0] is pipeline


def test_an_sdxl_lora_bundle_inserts_both_encoders_rows_as_the_reference(sdxl, tmp_path):  # noqa: F811
    """SDXL keys (`clip_l`, `clip_g`) read from a LoRA file, inserted by a pass's pipeline: A1111's conditioning
    with the same vectors, computed on the torch pipeline."""
    xl, pipe = sdxl
    clip_l, clip_g = vectors(2, 32, seed=8), vectors(2, 64, seed=9)
    path = tmp_path / "xl.safetensors"
    save_file({"bundle_emb.sksdog.clip_l": clip_l, "bundle_emb.sksdog.clip_g": clip_g}, path)
    bundled = xl.with_bundled_embeddings(load_network(path).embeddings)
    segments = [("a ", 1.0), ("sksdog", 1.2), (" on the grass", 1.0)]
    ours = bundled.prompt_encoder.encode_texts(["a (sksdog:1.2) on the grass"], NO_NORM)[0]
    np.testing.assert_allclose(ours, sdxl_reference(pipe, segments, {"sksdog": clip_l}, {"sksdog": clip_g}),
                               atol=ATOL, rtol=0)

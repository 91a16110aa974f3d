"""engine/embedding_files.py on files written the way A1111, diffusers and SDXL trainers write them (torch,
safetensors and PIL write them in the test)."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from engine.embedding_files import (  # noqa: E402
    EmbeddingFileError,
    embedding_width,
    is_candidate,
    read_embedding,
)


def _sha12(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_a1111_pt_with_training_metadata(tmp_path):
    vec = torch.randn(3, 768)
    path = tmp_path / "EasyNegative.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vec)},
                "name": "other-name", "step": 1500, "sd_checkpoint": "6ce0161689",
                "sd_checkpoint_name": "v1-5-pruned-emaonly"}, path)
    e = read_embedding(path)
    assert e.name == "EasyNegative"  # the file stem, case kept; a .pt's own `name` is not used
    assert set(e.vectors) == {"text_encoder"}
    np.testing.assert_array_equal(e.vectors["text_encoder"], vec.numpy())
    assert e.vectors["text_encoder"].dtype == np.float32
    assert (e.step, e.sd_checkpoint, e.sd_checkpoint_name) == (1500, "6ce0161689", "v1-5-pruned-emaonly")
    assert e.shorthash == _sha12(path) and e.filename == str(path)
    assert (e.n_vectors, embedding_width(e)) == (3, 768)


def test_fp16_bin_is_widened(tmp_path):
    vec = torch.randn(2, 1024).half()
    path = tmp_path / "sd2.bin"
    torch.save({"string_to_param": {"*": vec}}, path)
    e = read_embedding(path)
    np.testing.assert_array_equal(e.vectors["text_encoder"], vec.float().numpy())
    assert (e.step, e.sd_checkpoint, e.sd_checkpoint_name) == (None, None, None)
    assert embedding_width(e) == 1024


def test_diffusers_learned_embeds_is_unsqueezed(tmp_path):
    vec = torch.randn(768)
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": vec}, path)
    e = read_embedding(path)
    assert e.name == "learned_embeds"
    np.testing.assert_array_equal(e.vectors["text_encoder"], vec.numpy()[None, :])


def test_safetensors_emb_params_and_bf16(tmp_path):
    vec = torch.randn(4, 768).bfloat16()
    path = tmp_path / "style.safetensors"
    safetensors_torch.save_file({"emb_params": vec}, path)
    e = read_embedding(path)
    np.testing.assert_array_equal(e.vectors["text_encoder"], vec.float().numpy())
    assert e.shorthash == _sha12(path)


def test_sdxl_clip_l_clip_g(tmp_path):
    clip_l, clip_g = torch.randn(2, 768), torch.randn(2, 1280)
    path = tmp_path / "xl.safetensors"
    safetensors_torch.save_file({"clip_l": clip_l, "clip_g": clip_g}, path)
    e = read_embedding(path)
    np.testing.assert_array_equal(e.vectors["text_encoder"], clip_l.numpy())
    np.testing.assert_array_equal(e.vectors["text_encoder_2"], clip_g.numpy())
    assert (e.n_vectors, embedding_width(e)) == (2, 2048)


def test_more_than_one_term_is_an_error(tmp_path):
    a = tmp_path / "two.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 768), "+": torch.zeros(1, 768)}}, a)
    with pytest.raises(EmbeddingFileError, match="multiple terms"):
        read_embedding(a)
    b = tmp_path / "two.safetensors"
    safetensors_torch.save_file({"a": torch.zeros(1, 768), "b": torch.zeros(1, 768)}, b)
    with pytest.raises(EmbeddingFileError, match="multiple terms"):
        read_embedding(b)
    c = tmp_path / "odd.pt"
    torch.save({"something": "else"}, c)
    with pytest.raises(EmbeddingFileError, match="Couldn't identify"):
        read_embedding(c)


def test_skipped_and_ignored_files(tmp_path):
    (tmp_path / "zero.pt").write_bytes(b"")
    assert read_embedding(tmp_path / "zero.pt") is None
    Image.new("RGB", (4, 4)).save(tmp_path / "x.preview.png")
    assert not is_candidate(tmp_path / "x.preview.png")
    assert read_embedding(tmp_path / "x.preview.png") is None
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")  # an image without the chunk: not an embedding
    assert read_embedding(tmp_path / "plain.png") is None
    (tmp_path / "notes.txt").write_text("x")
    assert read_embedding(tmp_path / "notes.txt") is None
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(EmbeddingFileError):
        read_embedding(tmp_path / "bad.pt")


def _a1111_b64(data: dict) -> str:
    """A1111's embedding_to_b64: JSON with each tensor as {"TORCHTENSOR": nested lists}, base64."""
    def default(obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.cpu().detach().numpy().tolist()}
        raise TypeError(obj)
    return base64.b64encode(json.dumps(data, default=default).encode()).decode()


def test_png_with_sd_ti_embedding_chunk(tmp_path):
    vec = torch.randn(2, 768)
    chunk = _a1111_b64({"string_to_param": {"*": vec}, "name": "from-image", "step": 12})
    path = tmp_path / "card.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", chunk)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    e = read_embedding(path)
    assert e.name == "from-image" and e.step == 12
    np.testing.assert_allclose(e.vectors["text_encoder"], vec.numpy(), rtol=0, atol=1e-7)

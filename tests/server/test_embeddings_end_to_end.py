"""Textual inversion through a real server: a file in `models/embeddings` is listed for the loaded model, changes
the picture when its name is in the prompt, is reported in `TI hashes`, and an embedding of another width stays
text (A1111 modules/textual_inversion/textual_inversion.py; modules/sd_hijack_clip.py), and so does an embedding bundled in a LoRA file while that LoRA is
in the prompt (extensions-builtin/Lora/networks.py)."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest
import requests
import torch
from safetensors.torch import save_file

from engine.bundle import load_bundle
from tests.sdapi_server import FAST, decode, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ti-server")
    folder = workdir / "models" / "embeddings"
    folder.mkdir(parents=True)
    width = load_bundle(demo_bundle).manifest.text_hidden_size
    generator = torch.Generator().manual_seed(3)
    shiny = torch.randn(2, width, generator=generator)
    torch.save({"string_to_param": {"*": shiny}, "step": 120,
                "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "demo"}, folder / "ShinyStyle.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, width + 8, generator=generator)}}, folder / "widething.pt")
    # A LoRA of bundled embeddings only (A1111 networks.py: bundle_emb): ShinyStyle's vectors under another name,
    # other vectors under ShinyStyle's name (the file wins), and one of another width.
    loras = workdir / "models" / "Lora"
    loras.mkdir(parents=True)
    save_file({"bundle_emb.BundledStyle.string_to_param.*": shiny,
               "bundle_emb.ShinyStyle.string_to_param.*": torch.randn(2, width, generator=generator),
               "bundle_emb.widebundle.string_to_param.*": torch.randn(1, width + 8, generator=generator)},
              loras / "bundle.safetensors")
    save_file({"bundle_emb.BrokenStyle.a": shiny.clone(), "bundle_emb.BrokenStyle.b": shiny.clone()}, loras / "broken.safetensors")
    with running_server(demo_bundle, workdir, second_model=False, grpc=True) as (url, target):
        yield url, folder, width, target


def txt2img(url: str, prompt: str, **extra) -> tuple[bytes, dict]:
    response = requests.post(f"{url}/sdapi/v1/txt2img",
                             json={**FAST, "steps": 2, "prompt": prompt, "seed": 11, **extra}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    return decode(body["images"][0]).tobytes(), json.loads(body["info"])


def test_listing_splits_by_the_loaded_models_width(server):
    url, _, width, _ = server
    body = requests.get(f"{url}/sdapi/v1/embeddings", timeout=30).json()
    assert body["loaded"] == {"ShinyStyle": {"step": 120, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "demo",
                                             "shape": width, "vectors": 2}}
    assert body["skipped"]["widething"]["shape"] == width + 8


def test_an_embedding_changes_the_picture_and_is_hashed(server):
    url, folder, _, _ = server
    base, base_info = txt2img(url, "a red circle")
    with_ti, info = txt2img(url, "a red circle, shinystyle")  # matched on tokens: case does not matter
    plain_word, _ = txt2img(url, "a red circle, shiny style")
    assert with_ti != base and with_ti != plain_word
    sha = hashlib.sha256((folder / "ShinyStyle.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "ShinyStyle: {sha}"' in info["infotexts"][0]
    assert "TI hashes" not in base_info["infotexts"][0]
    # In the negative prompt it counts too; the option turns the entry off.
    _, negative_info = txt2img(url, "a red circle", negative_prompt="ShinyStyle")
    assert f'TI hashes: "ShinyStyle: {sha}"' in negative_info["infotexts"][0]
    _, off_info = txt2img(url, "a red circle, shinystyle",
                          override_settings={"textual_inversion_add_hashes_to_infotext": False})
    assert "TI hashes" not in off_info["infotexts"][0]
    # Back to the base: the same bytes as before any embedding was used.
    assert txt2img(url, "a red circle")[0] == base


def test_an_embedding_of_another_width_stays_text(server):
    url, _, _, _ = server
    skipped, info = txt2img(url, "a red circle, widething")
    assert "TI hashes" not in info["infotexts"][0]
    assert skipped != txt2img(url, "a red circle")[0]  # the word is still prompt text


def test_refresh_sees_a_new_file(server):
    url, folder, width, _ = server
    torch.save({"emb_params": torch.ones(1, width)}, folder / "later.pt")
    try:
        assert requests.post(f"{url}/sdapi/v1/refresh-embeddings", timeout=30).json() is None
        assert "later" in requests.get(f"{url}/sdapi/v1/embeddings", timeout=30).json()["loaded"]
    finally:
        (folder / "later.pt").unlink()
        requests.post(f"{url}/sdapi/v1/refresh-embeddings", timeout=30)


def test_grpc_reports_the_embeddings_typed(server):
    from service.generated import sdedge_pb2, sdedge_pb2_grpc

    url, folder, _, target = server
    with grpc.insecure_channel(target) as channel:
        stub = sdedge_pb2_grpc.SdEdgeStub(channel)
        reply = stub.Txt2Img(sdedge_pb2.Txt2ImgRequest(prompt="a red circle, shinystyle", steps=1, width=64,
                                                       height=64, seed=11), timeout=300)
    sha = hashlib.sha256((folder / "ShinyStyle.pt").read_bytes()).hexdigest()[:12]
    assert [(e.name, e.hash) for e in reply.info.embeddings] == [("ShinyStyle", sha)]
    assert f'TI hashes: "ShinyStyle: {sha}"' in reply.images[0].infotext


def test_an_embedding_bundled_in_a_lora_draws_as_the_same_file(server):
    url, folder, _, _ = server
    sha = hashlib.sha256((folder / "ShinyStyle.pt").read_bytes()).hexdigest()[:12]
    from_file, _ = txt2img(url, "a red circle, shinystyle")
    bundled, info = txt2img(url, "<lora:bundle:1>a red circle, bundledstyle")
    assert bundled == from_file  # the same vectors in the same place: the same pixels
    assert 'TI hashes: "BundledStyle: bundle"' in info["infotexts"][0]  # the LoRA's name is the hash
    # Without its LoRA the name is prompt text again.
    as_text, text_info = txt2img(url, "a red circle, bundledstyle")
    assert as_text != from_file and "TI hashes" not in text_info["infotexts"][0]
    # A file of the same name wins over the bundled vectors, hash included.
    same_name, same_info = txt2img(url, "<lora:bundle:1>a red circle, shinystyle")
    assert same_name == from_file
    assert f'TI hashes: "ShinyStyle: {sha}"' in same_info["infotexts"][0]
    # Another width: not loaded, the name stays text.
    wide, wide_info = txt2img(url, "<lora:bundle:1>a red circle, widebundle")
    assert wide == txt2img(url, "a red circle, widebundle")[0] and "TI hashes" not in wide_info["infotexts"][0]
    # lora_bundled_ti_to_infotext off: A1111 still lists the name, with an empty hash.
    _, off_info = txt2img(url, "<lora:bundle:1>a red circle, bundledstyle",
                          override_settings={"lora_bundled_ti_to_infotext": False})
    assert 'TI hashes: "BundledStyle: "' in off_info["infotexts"][0]
    # Whatever the LoRA's weights: at 0 it merges nothing and still brings its embeddings (A1111 registers them).
    assert txt2img(url, "<lora:bundle:0>a red circle, bundledstyle")[0] == from_file
    assert txt2img(url, "a red circle, shinystyle")[0] == from_file  # nothing stayed behind


def test_a_bundle_that_is_no_embedding_is_reported_and_the_job_runs(server):
    url, _, _, _ = server
    image, info = txt2img(url, "<lora:broken:1>a red circle, brokenstyle")
    assert any("Networks with errors" in w and "multiple terms" in w for w in info["sdedge_warnings"])
    assert image == txt2img(url, "a red circle, brokenstyle")[0]

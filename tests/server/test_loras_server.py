"""LoRAs over the sdapi: discovery and listing, `<lora:…>` in prompts, `Lora hashes`, errors reported, not raised."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import requests

from engine.safetensors_file import write_file
from tests.engine.test_lora import kohya_lora
from tests.sdapi_server import FAST, decode, running_server

pytestmark = pytest.mark.slow


def addnet_hash(path) -> str:
    """kohya's hash: sha256 of what follows the 8-byte length and the JSON header."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()


@pytest.fixture(scope="module")
def server(demo_bundle, torch_pipeline, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora-server")
    lora_dir = workdir / "models" / "Lora"
    (lora_dir / "sub").mkdir(parents=True)
    write_file(lora_dir / "detail.safetensors", kohya_lora(torch_pipeline, 1, scale=0.3),
               {"ss_output_name": "detail-alias", "ss_network_dim": "4", "ss_tag_frequency": '{"a": {"b": 1}}'})
    write_file(lora_dir / "sub" / "second.safetensors", kohya_lora(torch_pipeline, 2))
    with running_server(demo_bundle, workdir, second_model=False, grpc=True) as (url, grpc_target):
        yield url, lora_dir, grpc_target


def txt2img(url: str, prompt: str, **extra) -> tuple[bytes, dict]:
    """(the first image's pixels, info)."""
    response = requests.post(f"{url}/sdapi/v1/txt2img",
                             json={**FAST, "steps": 3, "prompt": prompt, "seed": 7, **extra}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    return decode(body["images"][0]).tobytes(), json.loads(body["info"])  # pixels: the PNG holds the infotext


def test_listing_and_refresh(server):
    url, lora_dir, _ = server
    listed = requests.get(f"{url}/sdapi/v1/loras", timeout=30).json()
    assert [item["name"] for item in listed] == ["detail", "second"]
    detail = listed[0]
    assert detail["alias"] == "detail-alias"
    assert detail["path"] == str(lora_dir / "detail.safetensors")
    assert detail["metadata"]["ss_tag_frequency"] == {"a": {"b": 1}}  # JSON values decoded
    assert listed[1]["alias"] == "second" and listed[1]["metadata"] == {}
    write_file(lora_dir / "third.safetensors", {"x.alpha": __import__("numpy").ones(1, "float32")})
    assert len(requests.get(f"{url}/sdapi/v1/loras", timeout=30).json()) == 2
    assert requests.post(f"{url}/sdapi/v1/refresh-loras", timeout=30).json() is None
    assert "third" in [i["name"] for i in requests.get(f"{url}/sdapi/v1/loras", timeout=30).json()]
    (lora_dir / "third.safetensors").unlink()
    requests.post(f"{url}/sdapi/v1/refresh-loras", timeout=30)


def test_lora_changes_the_image_and_is_reported_in_the_infotext(server):
    url, lora_dir, _ = server
    base, base_info = txt2img(url, "a red circle")
    with_lora, info = txt2img(url, "a red circle <lora:detail:1>")
    assert with_lora != base
    expected = addnet_hash(lora_dir / "detail.safetensors")[:12]
    assert f'Lora hashes: "detail: {expected}"' in info["infotexts"][0]
    assert info["prompt"] == "a red circle <lora:detail:1>"  # the tag stays in the reported prompt
    assert "Lora hashes" not in base_info["infotexts"][0]
    # By alias: the same network, the same picture; the hash is keyed by the name as written.
    by_alias, alias_info = txt2img(url, "a red circle <lora:detail-alias:1>")
    assert by_alias == with_lora
    assert f'Lora hashes: "detail-alias: {expected}"' in alias_info["infotexts"][0]
    # Afterwards the base model is untouched, and weight 0 is the base model (still hashed, as in A1111).
    again, _ = txt2img(url, "a red circle")
    assert again == base
    zero, zero_info = txt2img(url, "a red circle <lora:detail:0>")
    assert zero == base
    assert f'Lora hashes: "detail: {expected}"' in zero_info["infotexts"][0]


def test_two_networks_and_named_arguments(server):
    url, _, _ = server
    one, _ = txt2img(url, "a red circle <lora:detail:1>")
    two, info = txt2img(url, "a red circle <lora:detail:1> <lora:second:0.5>")
    assert two != one
    assert "detail: " in info["infotexts"][0] and "second: " in info["infotexts"][0]
    named, _ = txt2img(url, "a red circle <lora:detail:te=1:unet=1>")
    assert named == one


def test_missing_and_broken_networks_are_reported_and_the_image_is_made(server):
    url, lora_dir, _ = server
    base, _ = txt2img(url, "a red circle")
    image, info = txt2img(url, "a red circle <lora:nothere:1>")
    assert image == base
    assert "Lora not found: nothere" in info["sdedge_warnings"]
    image, info = txt2img(url, "a red circle <lora:detail:abc>")
    assert image == base
    assert any("LoRAs not applied" in w for w in info["sdedge_warnings"])
    # A file the network code cannot read is an error for this request, not for the server.
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    requests.post(f"{url}/sdapi/v1/refresh-loras", timeout=30)
    image, info = txt2img(url, "a red circle <lora:broken:1>")
    assert image == base
    assert any("Networks with errors" in w for w in info["sdedge_warnings"])
    (lora_dir / "broken.safetensors").unlink()


def test_negative_prompt_keeps_tags_as_text_and_disable_extra_networks(server):
    url, _, _ = server
    base, _ = txt2img(url, "a red circle")
    disabled, info = txt2img(url, "a red circle <lora:detail:1>", disable_extra_networks=True)
    assert disabled == base and "Lora hashes" not in info["infotexts"][0]
    negative, info = txt2img(url, "a red circle", negative_prompt="<lora:detail:1>")
    assert "Lora hashes" not in info["infotexts"][0]
    assert negative != base  # the tag is encoded as text, not dropped


def test_sd_lora_option_appends_the_network(server):
    url, _, _ = server
    with_tag, _ = txt2img(url, "a red circle <lora:detail:1>")
    by_option, info = txt2img(url, "a red circle", override_settings={"sd_lora": "detail"})
    assert by_option == with_tag
    assert info["prompt"] == "a red circle<lora:detail:1>"


def test_pasted_infotext_finds_the_network_by_its_hash(server):
    url, lora_dir, _ = server
    direct, _ = txt2img(url, "a red circle <lora:detail:1>")
    shorthash = addnet_hash(lora_dir / "detail.safetensors")[:12]
    infotext = (f"a red circle <lora:renamed-on-their-machine:1>\nSteps: 3, Sampler: Euler, Seed: 7, Size: 64x64, "
                f'Lora hashes: "renamed-on-their-machine: {shorthash}"')
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"infotext": infotext, "width": 64, "height": 64},
                             timeout=300)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "a red circle <lora:detail-alias:1>"  # the alias, as A1111 writes it back
    assert decode(response.json()["images"][0]).tobytes() == direct


def test_grpc_lists_the_networks_of_a_request(server):
    import grpc

    from service.generated import sdedge_pb2 as pb
    from service.generated import sdedge_pb2_grpc as pb_grpc

    url, lora_dir, target = server
    shorthash = addnet_hash(lora_dir / "detail.safetensors")[:12]
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.SdEdgeStub(channel).Txt2Img(pb.Txt2ImgRequest(
            prompt="a red circle <lora:detail:0.5:unet=0.25:dyn=2> <lora:nothere:1>", steps=1, width=64, height=64,
            seed=7), timeout=300)
    assert [(n.name, n.hash, n.te, n.unet, n.dyn) for n in response.info.networks] == [
        ("detail", shorthash, 0.5, 0.25, 2)]
    assert response.info.networks[0].HasField("dyn")

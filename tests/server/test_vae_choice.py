"""A separate VAE file chosen by name through the sdapi (A1111 modules/sd_vae.py), end to end on a real server.

The VAE is written in the test (random weights, the demo model's VAE config, LDM layout); the reference decode is
diffusers' AutoencoderKL in torch on the latents our own pipeline produces for the same request (the decoder's
parity with diffusers is pinned on its own in tests/export/test_vae_export.py).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import requests

from service.a1111.infotext import parse_infotext
from tests.sdapi_server import FAST, SECOND, decode, png_b64, running_server
from tests.vae_files import bundle_vae_config, random_vae, write_ldm_vae

torch = pytest.importorskip("torch")

VAE = "my-vae.safetensors"
BODY = {"prompt": "a red circle", "seed": 5, **FAST}


@pytest.fixture(scope="module")
def vae_reference(demo_bundle):
    torch.set_num_threads(1)
    return random_vae(bundle_vae_config(demo_bundle), seed=21)


@pytest.fixture(scope="module")
def setup(demo_bundle, vae_reference, tmp_path_factory):
    work = tmp_path_factory.mktemp("vae-server")
    models = work / "models"
    file = write_ldm_vae(vae_reference, models / "VAE" / VAE)
    # Declared SDXL by name: listed, never used on this SD 1.x model (the family rule), never exported.
    shutil.copyfile(file, models / "VAE" / "sdxl_vae.safetensors")
    extra = work / "extra-vaes"
    for name in ("sdxl-a10.safetensors", "sdxl-a9.safetensors"):
        extra.mkdir(exist_ok=True)
        shutil.copyfile(file, extra / name)
    # Beside the checkpoints, named after the second one: "Automatic" picks it (the same bytes: one export).
    shutil.copyfile(file, models / f"{SECOND}.vae.safetensors")
    (models / "VAE" / "broken.pt").write_bytes(b"not a checkpoint")  # listed; its export fails (logged)
    with running_server(demo_bundle, work, "--vae-dir", str(extra), grpc=True) as (url, target):
        yield url, work, hashlib.sha256(file.read_bytes()).hexdigest(), target


def _txt2img(url, timeout=600, **body):
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={**BODY, **body}, timeout=timeout)
    assert r.status_code == 200, r.text
    data = r.json()
    info = __import__("json").loads(data["info"])
    return np.asarray(decode(data["images"][0]).convert("RGB")), info


def _own_run(demo_pipeline, body=BODY):
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.a1111.translate import plan_txt2img

    return demo_pipeline.txt2img(plan_txt2img(Txt2ImgRequest(**body), {}))


def _torch_decode(vae, latents) -> np.ndarray:
    with torch.no_grad():
        sample = vae.decode(torch.from_numpy(np.asarray(latents)[None] / 0.18215)).sample.numpy()
    return (255.0 * np.clip((np.moveaxis(sample[0], 0, -1) + 1) / 2, 0, 1)).astype(np.uint8)


def test_sd_vae_lists_every_source_natural_sorted(setup):
    url, work, *_ = setup
    listed = requests.get(f"{url}/sdapi/v1/sd-vae", timeout=10).json()
    assert [v["model_name"] for v in listed] == [
        "broken.pt", VAE, f"{SECOND}.vae.safetensors", "sdxl-a9.safetensors", "sdxl-a10.safetensors", "sdxl_vae.safetensors"]
    assert listed[1] == {"model_name": VAE, "filename": str((work / "models" / "VAE" / VAE).resolve())}
    assert requests.get(f"{url}/sdapi/v1/options", timeout=10).json()["sd_vae"] == "Automatic"


def test_selected_vae_decodes_as_diffusers_and_is_reported(setup, demo_pipeline, vae_reference):
    url, work, sha, _ = setup
    got, info = _txt2img(url, override_settings={"sd_vae": VAE})
    own = _own_run(demo_pipeline)
    want = _torch_decode(vae_reference, own.latents[0])
    # ≤ 1e-4 on the decoder output (pinned in tests/export) → at most one level where 255·x truncates across it
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.mean(got == want) > 0.99
    assert np.abs(got.astype(int) - np.asarray(own.images[0]).astype(int)).mean() > 5  # really another VAE
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == (VAE, sha[:10])
    params = parse_infotext(info["infotexts"][0])
    assert (params["VAE hash"], params["VAE"]) == (sha[:10], VAE)
    line = info["infotexts"][0].splitlines()[-1]
    assert line.index("Model: sdedge-tiny, VAE hash: ") < line.index(f"VAE: {VAE}, ")
    assert list((work / "models" / "VAE" / ".sdedge").glob(f"{sha[:16]}-sd-*/vae.json"))


@pytest.mark.parametrize("name", ["None", "no-such-vae.safetensors", "sdxl_vae.safetensors"])
def test_none_unknown_and_other_family_run_the_checkpoints_own_vae(setup, demo_pipeline, name):
    url, *_ = setup
    got, info = _txt2img(url, override_settings={"sd_vae": name})
    assert np.array_equal(got, np.asarray(_own_run(demo_pipeline).images[0]))
    assert info["sd_vae_name"] is None and info["sd_vae_hash"] is None
    assert "VAE" not in parse_infotext(info["infotexts"][0]) and "VAE hash" not in info["infotexts"][0]


def test_automatic_takes_a_vae_named_after_the_checkpoint_by_prefix(setup):
    url, _, sha, _ = setup
    # A1111's prefix quirk: `sdedge-tiny-b.vae.safetensors` starts with `sdedge-tiny` too, so both models take it.
    for model in ("sdedge-tiny", SECOND):
        _, info = _txt2img(url, override_settings={"sd_model_checkpoint": model})
        assert info["sd_vae_name"] == f"{SECOND}.vae.safetensors" and info["sd_vae_hash"] == sha[:10]
    # with the per-model preference off, a named setting still loses to the file beside the checkpoint
    _, info = _txt2img(url, override_settings={"sd_vae": VAE, "sd_vae_overrides_per_model_preferences": False})
    assert info["sd_vae_name"] == f"{SECOND}.vae.safetensors"


def test_infotext_options_and_paste(setup):
    url, _, sha, _ = setup
    _, info = _txt2img(url, override_settings={"sd_vae": VAE, "add_vae_hash_to_info": False})
    params = parse_infotext(info["infotexts"][0])
    assert params["VAE"] == VAE and "VAE hash" not in params and info["sd_vae_hash"] == sha[:10]
    _, info = _txt2img(url, override_settings={"sd_vae": VAE, "add_vae_name_to_info": False})
    assert "VAE" not in parse_infotext(info["infotexts"][0])
    # A pasted infotext's `VAE` becomes override_settings.sd_vae (A1111 infotext_utils.get_override_settings).
    _, info = _txt2img(url, infotext=f"a red circle\nSteps: 1, Seed: 5, Size: 64x64, VAE: {VAE}")
    assert info["sd_vae_name"] == VAE


def test_option_sd_vae_through_post_options(setup):
    url, *_ = setup
    assert requests.post(f"{url}/sdapi/v1/options", json={"sd_vae": VAE}, timeout=60).json() is None
    try:
        _, info = _txt2img(url)
        assert info["sd_vae_name"] == VAE
    finally:
        requests.post(f"{url}/sdapi/v1/options", json={"sd_vae": "Automatic"}, timeout=60)


def test_refresh_vae_finds_new_files(setup):
    url, work, *_ = setup
    shutil.copyfile(work / "models" / "VAE" / VAE, work / "models" / "VAE" / "sdxl-new.safetensors")
    r = requests.post(f"{url}/sdapi/v1/refresh-vae", timeout=60)
    assert r.status_code == 200 and r.json() is None
    assert "sdxl-new.safetensors" in [v["model_name"] for v in requests.get(f"{url}/sdapi/v1/sd-vae").json()]


class _DecoderOnly:
    """The checkpoint's backend with only `vae_decoder` taken from another VAE (the encoder stays its own)."""

    def __init__(self, inner, vae):
        self.inner, self.vae = inner, vae

    def run(self, component, inputs):
        return (self.vae if component == "vae_decoder" else self.inner).run(component, inputs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_img2img_encodes_with_the_chosen_vae(setup, demo_bundle):
    from PIL import Image

    from engine.pipeline import Pipeline
    from engine.vae_override import install_vae_switch, open_exported_vae
    from service.a1111.sdapi_models import Img2ImgRequest
    from service.a1111.translate import plan_img2img

    url, work, sha, _ = setup
    init = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    body = {**BODY, "init_images": [png_b64(init)], "denoising_strength": 0.5, "steps": 2}
    r = requests.post(f"{url}/sdapi/v1/img2img", json={**body, "override_settings": {"sd_vae": VAE}}, timeout=600)
    assert r.status_code == 200, r.text
    got = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
    exported = open_exported_vae(next((work / "models" / "VAE" / ".sdedge").glob(f"{sha[:16]}-sd-*")))
    plan = plan_img2img(Img2ImgRequest(**body), {})
    both = Pipeline.from_path(demo_bundle)
    install_vae_switch(both).select(exported.backend)
    assert np.array_equal(got, np.asarray(both.img2img(plan).images[0]))
    decoder_only = Pipeline.from_path(demo_bundle)
    decoder_only.backend = _DecoderOnly(decoder_only.backend, exported.backend)
    assert not np.array_equal(got, np.asarray(decoder_only.img2img(plan).images[0]))


def test_a_vae_that_cannot_be_exported_is_a_503_naming_it_and_the_server_keeps_serving(setup):
    url, work, *_ = setup
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={**BODY, "override_settings": {"sd_vae": "broken.pt"}},
                      timeout=600)
    assert r.status_code == 503, r.text
    assert "broken.pt" in r.json()["detail"] and "cannot read" in r.json()["detail"]
    assert _txt2img(url, override_settings={"sd_vae": "None"})[1]["sd_vae_name"] is None
    assert "exporting VAE broken.pt" in (work / "server.log").read_text()


def test_grpc_lists_vaes_and_takes_sd_vae_through_override_settings(setup):
    import grpc
    from google.protobuf import struct_pb2

    from service.generated import sdedge_pb2 as pb
    from service.generated import sdedge_pb2_grpc as pb_grpc

    url, _, sha, target = setup
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SdEdgeStub(channel)
        listed = stub.ListVaes(pb.ListVaesRequest(), timeout=30).vaes
        assert [(v.model_name, v.filename) for v in listed] == [
            (v["model_name"], v["filename"]) for v in requests.get(f"{url}/sdapi/v1/sd-vae", timeout=10).json()]
        overrides = struct_pb2.Struct()
        overrides.update({"sd_vae": VAE})
        response = stub.Txt2Img(pb.Txt2ImgRequest(prompt="a red circle", seed=5, steps=1, width=64, height=64,
                                                  override_settings=overrides), timeout=600)
    info = __import__("json").loads(response.info_json)
    assert (response.info.sd_vae_name, response.info.sd_vae_hash) == (VAE, sha[:10])
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == (VAE, sha[:10])

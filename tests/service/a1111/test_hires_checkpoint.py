"""`hr_checkpoint_name`: hires fix's second pass on another checkpoint (A1111 modules/api/models.py:
StableDiffusionTxt2ImgProcessingAPI; modules/processing.py: create_infotext; the dev branch, 1937682a).

Model A is the demo bundle (random weights), model B the trained shapes bundle: both SD 1.x with 4-channel
latents, different UNet, text encoder and VAE (B's VAE scaling factor is not A's either).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import image_ops

B_SHA256 = "b" * 64
B_TITLE = f"sdedge-shapes-b [{B_SHA256[:10]}]"
FIRST = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler",
         "cfg_scale": 7.0}
# NV noise leaves the VAE posterior unsampled (its mean) in both hires fix and img2img (engine.img2img.encoder_noise).
NV = {"randn_source": "NV"}


def linked_bundle(source: Path, target: Path, **manifest) -> Path:
    """`source` seen as another checkpoint: its components linked, its manifest changed by `manifest`."""
    target.mkdir(parents=True)
    for child in source.iterdir():
        if child.name != "manifest.json":
            (target / child.name).symlink_to(child.resolve(), target_is_directory=child.is_dir())
    data = json.loads((source / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**data, **manifest}))
    return target


@pytest.fixture(scope="module")
def server(demo_bundle, shapes_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("hires-checkpoint")
    models = tmp / "models"
    linked_bundle(shapes_bundle, models / "sdedge-shapes-b", name="sdedge-shapes-b", source_sha256=B_SHA256)
    linked_bundle(demo_bundle, models / "sdedge-tiny-xl", name="sdedge-tiny-xl", source_sha256="c" * 64,
                  architecture="sdxl")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=models, options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client, state
    state.close()


def txt2img(client, **fields):
    r = client.post("/sdapi/v1/txt2img", json={**FIRST, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def hires(client, **fields):
    return txt2img(client, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3, denoising_strength=0.6, **fields)


def pixels(response: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response["images"][0]))).convert("RGB"))


def infotext(response: dict) -> str:
    return json.loads(response["info"])["infotexts"][0]


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_second_pass_is_img2img_on_the_hires_checkpoint(server):
    # A1111 modules/processing.py: StableDiffusionProcessingTxt2Img.sample_hr_pass: with an image upscaler the
    # second pass is the first-pass image (decoded by A's VAE: A1111 decodes
    # before it switches), upscaled, then img2img at fixed steps on B (B's VAE encodes and decodes, B's text
    # encoder, UNet and schedule). The reference takes that path through img2img on B.
    client, _ = server
    first = txt2img(client, override_settings=NV)
    up = image_ops.resize_image(image_ops.JUST_RESIZE, Image.fromarray(pixels(first)), 128, 128, "Lanczos")
    reference = client.post("/sdapi/v1/img2img", json={
        **FIRST, "init_images": [png_b64(up)], "width": 128, "height": 128, "denoising_strength": 0.6,
        "override_settings": {**NV, "img2img_fix_steps": True, "sd_model_checkpoint": B_TITLE},
    })
    assert reference.status_code == 200, reference.text
    got = hires(client, hr_upscaler="Lanczos", hr_checkpoint_name="sdedge-shapes-b", override_settings=NV)
    np.testing.assert_array_equal(pixels(got), pixels(reference.json()))
    same_model = hires(client, hr_upscaler="Lanczos", override_settings=NV)
    assert np.abs(pixels(same_model).astype(int) - pixels(got)).mean() > 5


@pytest.mark.slow
def test_infotext_and_info(server):
    client, _ = server
    r = hires(client, hr_checkpoint_name=B_SHA256[:10])
    text = infotext(r)
    assert f"Model: sdedge-tiny, Denoising strength: 0.6, Hires checkpoint: {B_TITLE}, Hires upscale: 2.0," in text
    info = json.loads(r["info"])
    assert info["extra_generation_params"]["Hires checkpoint"] == B_TITLE
    assert info["sd_model_name"] == "sdedge-tiny"  # the first pass's checkpoint, as A1111 reports it
    # Every alias `sd_model_checkpoint` takes names B: the same image.
    for name in (B_TITLE, B_SHA256):
        assert hires(client, hr_checkpoint_name=name)["images"] == r["images"]
    assert pixels(r).shape == (128, 128, 3)


@pytest.mark.slow
def test_latent_upscaler_runs_on_the_hires_checkpoint(server):
    client, _ = server
    own = hires(client)
    other = hires(client, hr_checkpoint_name="sdedge-shapes-b")
    assert np.abs(pixels(own).astype(int) - pixels(other)).mean() > 5


@pytest.mark.slow
def test_the_same_checkpoint_is_ignored(server):
    client, state = server
    a = state.models.find("sdedge-tiny")
    plain = hires(client)
    assert "Hires checkpoint" not in infotext(plain)
    for name in ("Use same checkpoint", "", a.title, a.name, a.short_hash, a.sha256):
        r = hires(client, hr_checkpoint_name=name)
        assert r["images"] == plain["images"], name  # same bytes: same image, same infotext
        assert "Hires checkpoint" not in json.loads(r["info"])["extra_generation_params"]


def test_bad_names_are_4xx_and_the_server_keeps_serving(server):
    client, _ = server
    for name, detail in (("no-such-model", "Could not find checkpoint with name no-such-model"),
                         ("sdedge-tiny-xl", "cannot continue the first pass")):
        r = client.post("/sdapi/v1/txt2img", json={**FIRST, "enable_hr": True, "denoising_strength": 0.5,
                                                   "hr_checkpoint_name": name})
        assert r.status_code == 422, r.text
        body = r.json()
        assert set(body) == {"error", "detail", "body", "errors"}
        assert body["detail"].startswith("hr_checkpoint_name: ") and detail in body["detail"]
    # Without enable_hr the field is not read (A1111 resolves it in the hires setup only).
    txt2img(client, hr_checkpoint_name="no-such-model")


@pytest.mark.slow
def test_the_next_request_runs_on_its_own_checkpoint(server):
    client, state = server
    before = txt2img(client)
    hires(client, hr_checkpoint_name="sdedge-shapes-b")
    assert state.models.loaded[0].name == "sdedge-tiny"  # B was loaded for that job only
    after = txt2img(client)
    assert after["images"] == before["images"]
    assert json.loads(after["info"])["sd_model_name"] == "sdedge-tiny"


def test_the_hires_schedule_comes_from_the_hires_model():
    from engine.img2img import denoising_schedule, resolve_schedule
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.a1111.translate import plan_txt2img
    from service.runtime.models import ModelEntry
    from service.runtime.options import DEFAULTS

    def sigmas_of(top: float):
        return lambda sampler, scheduler, steps, settings=None: np.linspace(top, 0.0, steps + 1, dtype=np.float32)

    req = Txt2ImgRequest(**FIRST, enable_hr=True, denoising_strength=0.5, hr_second_pass_steps=4)
    entry = ModelEntry(name="other", path=Path("/nowhere"), sha256=B_SHA256)
    plan = plan_txt2img(req, DEFAULTS, hires_model=entry)
    # Each pass's schedule is resolved by the model that runs it (test below): here two stand-in models.
    assert resolve_schedule(plan.schedule, sigmas_of(10.0)).sigmas[0] == pytest.approx(10.0)
    expected = denoising_schedule(lambda n: sigmas_of(20.0)("Euler", "automatic", n), 4, 0.5, fix_steps=True)
    np.testing.assert_allclose(resolve_schedule(plan.hires_schedule, sigmas_of(20.0)).sigmas, expected)
    assert plan.hires.checkpoint == "other [bbbbbbbbbb]"


def test_each_pipeline_resolves_the_schedule_of_its_pass(demo_pipeline, monkeypatch):
    import copy
    from dataclasses import replace

    from engine.pipeline import Pipeline
    from tests.engine.test_hires import hires_plan

    other = copy.copy(demo_pipeline)  # the hires checkpoint's pipeline (the same weights will do)
    resolved = []
    for pipeline in (demo_pipeline, other):
        def recording(spec, pipeline=pipeline):
            resolved.append((pipeline, spec))
            return Pipeline.resolve_schedule(pipeline, spec)

        monkeypatch.setattr(pipeline, "resolve_schedule", recording)
    plan = hires_plan(demo_pipeline)
    plan = replace(plan, hires=replace(plan.hires, checkpoint="other [bbbbbbbbbb]"))
    demo_pipeline.txt2img(plan, hires_pipeline=other)
    assert resolved == [(demo_pipeline, plan.schedule), (other, plan.hires_schedule)]


def test_the_engine_wants_the_hires_pipeline(demo_pipeline):
    from dataclasses import replace

    from tests.engine.test_hires import hires_plan

    plan = hires_plan(demo_pipeline)
    with pytest.raises(ValueError, match="hires_pipeline"):
        demo_pipeline.txt2img(replace(plan, hires=replace(plan.hires, checkpoint="other [bbbbbbbbbb]")))

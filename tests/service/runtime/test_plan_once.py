"""A request is planned once, at submit time, whether or not its model is loaded (issue 13, "Plan once").

The plan specifies its schedules (`GenerationPlan.schedule`); the pipeline that runs a pass resolves them with its
own model's ᾱ. So a job submitted while another checkpoint is loaded runs with its model's schedule without being
planned again on the worker, and its init images are decoded once. A schedule the pipeline could not build is a
4xx at submit, never a failed job.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.images import b64, box_mask, noise_image
from tests.service.a1111.test_hires_checkpoint import linked_bundle

OTHER = "sdedge-other-schedule"  # the demo model with another noise schedule (beta_end 0.02 instead of 0.012)
SMALL = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
         "override_settings": {"randn_source": "NV"}}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("plan-once")
    schedule = json.loads((demo_bundle / "manifest.json").read_text()).get("noise_schedule", {})
    other = linked_bundle(demo_bundle, tmp / "models" / OTHER, name=OTHER, source_sha256="d" * 64,
                          noise_schedule={**schedule, "beta_end": 0.02})
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client, state, other
    state.close()


@pytest.fixture
def planned(monkeypatch) -> list:
    """Every plan service.runtime.generate makes, in order."""
    import service.runtime.generate as generate

    plans: list = []
    for name in ("plan_txt2img", "plan_img2img"):
        real = getattr(generate, name)

        def counting(*args, real=real, **kwargs):
            plans.append(real(*args, **kwargs))
            return plans[-1]

        monkeypatch.setattr(generate, name, counting)
    return plans


def pixels(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))).convert("RGB"))


def not_loaded(state, name: str) -> str:
    entry = state.models.find(name)
    assert state.models.loaded is None or state.models.loaded[0] != entry  # the request's model is not loaded
    return entry.title


def test_a_request_for_a_model_not_loaded_is_planned_once_and_runs_on_its_schedule(server, planned,
                                                                                    demo_pipeline):
    from engine.pipeline import Pipeline

    client, state, other = server
    title = not_loaded(state, OTHER)
    request = {**SMALL, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5,
               "override_settings": {**SMALL["override_settings"], "sd_model_checkpoint": title}}
    r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    assert len(planned) == 1  # no second planning on the worker
    plan = planned[0]
    own = Pipeline.from_path(other, "cpu")
    assert own.resolve_schedule(plan.schedule).sigmas[0] != demo_pipeline.resolve_schedule(plan.schedule).sigmas[0]
    expected = own.txt2img(plan).images[0]
    np.testing.assert_array_equal(pixels(r.json()["images"][0]), np.asarray(expected))
    # The loaded model's schedule would have given another image.
    assert not np.array_equal(np.asarray(demo_pipeline.txt2img(plan).images[0]), np.asarray(expected))


def test_img2img_decodes_its_images_once(server, planned, demo_pipeline, monkeypatch):
    import service.a1111.translate as translate

    client, state, _ = server
    decoded = []
    real = translate.decode_image
    monkeypatch.setattr(translate, "decode_image", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    title = not_loaded(state, "sdedge-tiny")
    request = {**SMALL, "init_images": [b64(noise_image(64, 64, 3))], "mask": b64(box_mask((64, 64), (8, 8, 40, 40))),
               "denoising_strength": 0.6, "include_init_images": True,
               "override_settings": {**SMALL["override_settings"], "sd_model_checkpoint": title}}
    r = client.post("/sdapi/v1/img2img", json=request)
    assert r.status_code == 200, r.text
    assert len(planned) == 1
    assert len(decoded) == 2  # the init image and the mask, each once
    np.testing.assert_array_equal(pixels(r.json()["images"][0]), np.asarray(demo_pipeline.img2img(planned[0]).images[0]))
    assert r.json()["parameters"]["init_images"] == request["init_images"]  # echoed as sent, not decoded again


@pytest.mark.parametrize("path,fields", [
    # DDIM's grid has one σ per training timestep: fixed steps for strength 0.001 would need 10000.
    ("img2img", {"sampler_name": "DDIM", "steps": 10, "denoising_strength": 0.001,
                 "override_settings": {"img2img_fix_steps": True}}),
    # k-diffusion: a schedule of 200000 steps.
    ("img2img", {"steps": 1000, "denoising_strength": 0.005, "override_settings": {"img2img_fix_steps": True}}),
    # The hires pass always counts fixed steps.
    ("txt2img", {"enable_hr": True, "hr_sampler_name": "PLMS", "hr_second_pass_steps": 5,
                 "denoising_strength": 0.004}),
])
def test_a_schedule_that_cannot_be_built_is_refused_at_submit(server, planned, path, fields):
    client, state, _ = server
    title = next(e.title for e in state.models.entries() if e != state.models.loaded[0])
    request = {**SMALL, **fields, "override_settings": {**fields.get("override_settings", {}),
                                                        "sd_model_checkpoint": title}}
    if path == "img2img":
        request["init_images"] = [b64(noise_image(64, 64, 4))]
    r = client.post(f"/sdapi/v1/{path}", json=request)
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert "denoising_strength" in body["detail"] and "at most" in body["detail"]
    assert planned == []  # refused while planning, before anything was queued
    assert state.models.loaded[0].title != title  # nor loaded

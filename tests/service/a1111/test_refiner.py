"""`refiner_checkpoint` / `refiner_switch_at` and the sdxl_* options through the REST door (A1111
modules/processing.py: process_images; modules/sd_samplers_common.py: apply_refiner; modules/sd_models_xl.py).

A tiny random SDXL base is the server's model; a tiny random SDXL refiner sits in the models folder, and the SD 1.x
demo bundle beside them (another latent space).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

REFINER_SHA = "e" * 64
REFINER_TITLE = f"tiny-refiner [{REFINER_SHA[:10]}]"
BODY = {"prompt": "a red circle", "negative_prompt": "", "steps": 4, "width": 48, "height": 32, "seed": 11,
        "sampler_name": "Euler", "cfg_scale": 5.0}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from export.onnx_export import export_pipeline
    from export.sdxl_demo import build_tiny_sdxl_pipeline
    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("refiner")
    models = tmp / "models"
    base = export_pipeline(build_tiny_sdxl_pipeline(seed=0), models / "tiny-sdxl", sha256="d" * 64)
    export_pipeline(build_tiny_sdxl_pipeline(seed=5, refiner=True), models / "tiny-refiner", sha256=REFINER_SHA)
    (models / "sdedge-tiny").symlink_to(demo_bundle, target_is_directory=True)
    state = ServerState(ServerConfig(model=base, models_dir=models, options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client
    state.close()


def txt2img(client, **fields):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def pixels(response: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response["images"][0]))).convert("RGB")).astype(int)


def infotext(response: dict) -> str:
    return json.loads(response["info"])["infotexts"][0]


def test_refiner_switches_and_writes_its_infotext(server):
    plain = txt2img(server)
    refined = txt2img(server, refiner_checkpoint=REFINER_TITLE, refiner_switch_at=0.5)
    assert f"Refiner: {REFINER_TITLE}, Refiner switch at: 0.5" in infotext(refined)
    assert "Refiner" not in infotext(plain)
    assert np.abs(pixels(refined) - pixels(plain)).max() > 10
    # Looked up like sd_model_checkpoint: the bare name works too, and the result is the same.
    again = txt2img(server, refiner_checkpoint="tiny-refiner", refiner_switch_at=0.5)
    assert np.array_equal(pixels(again), pixels(refined))


@pytest.mark.parametrize("name", [None, "", "None", "none"])
def test_no_refiner_names(server, name):
    response = txt2img(server, refiner_checkpoint=name, refiner_switch_at=0.5)
    assert "Refiner" not in infotext(response)


def test_unknown_or_incompatible_refiner_is_a_422(server):
    r = server.post("/sdapi/v1/txt2img", json={**BODY, "refiner_checkpoint": "no-such-model"})
    assert r.status_code == 422 and "Could not find checkpoint with name no-such-model" in r.text
    r = server.post("/sdapi/v1/txt2img", json={**BODY, "refiner_checkpoint": "sdedge-tiny"})
    assert r.status_code == 422 and "cannot continue" in r.text


def test_sdxl_options_take_effect(server):
    plain = pixels(txt2img(server))
    cropped = pixels(txt2img(server, override_settings={"sdxl_crop_top": 256}))
    assert np.abs(cropped - plain).max() > 0
    # The aesthetic scores reach only the refiner.
    assert np.array_equal(pixels(txt2img(server, override_settings={"sdxl_refiner_high_aesthetic_score": 9.0})),
                          plain)
    a = txt2img(server, refiner_checkpoint=REFINER_TITLE, refiner_switch_at=0.5)
    b = txt2img(server, refiner_checkpoint=REFINER_TITLE, refiner_switch_at=0.5,
                override_settings={"sdxl_refiner_high_aesthetic_score": 9.0})
    assert np.abs(pixels(a) - pixels(b)).max() > 0


def test_img2img_with_refiner(server):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    body = {**BODY, "init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.7,
            "refiner_checkpoint": REFINER_TITLE, "refiner_switch_at": 0.6}
    r = server.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert f"Refiner: {REFINER_TITLE}, Refiner switch at: 0.6" in infotext(r.json())


def test_refiner_with_hires_fix_and_by_steps(server):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
             "refiner_checkpoint": REFINER_TITLE, "refiner_switch_at": 0.5}
    text = infotext(txt2img(server, **hires))  # default option: the refiner takes the hires pass
    assert f"Refiner: {REFINER_TITLE}" in text and "Hires refiner" not in text
    text = infotext(txt2img(server, **hires, override_settings={"hires_fix_refiner_pass": "first pass",
                                                                 "refiner_switch_by_sample_steps": True}))
    assert "Hires refiner: first pass" in text and "Refiner switch by sampling steps: True" in text

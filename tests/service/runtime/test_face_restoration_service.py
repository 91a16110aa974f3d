"""`restore_faces`, `face_restoration_model`, `code_former_weight` and /sdapi/v1/face-restorers through the API,
with the synthetic restorers of tests/engine/test_face_restoration.py and its detector reporting one fixed face
(the demo model draws no faces), so the test knows where the restored region is."""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from service.a1111.sdapi_models import Txt2ImgRequest
from service.a1111.translate import plan_txt2img
from service.runtime.options import DEFAULTS
from tests.engine.test_face_restoration import install

FACE = (0.25, 0.25, 0.5, 0.5)  # where the detector reports the face: (16, 16)–(32, 32) in a 64 px image


def client_for(demo_bundle, tmp_path, folder):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp_path / "models",
                                     options_file=tmp_path / "o.json", face_restorers_dir=folder))
    return state, TestClient(create_app(state))


@pytest.fixture(scope="module")
def api_with_restorers(demo_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restorers-api")
    state, client = client_for(demo_bundle, tmp, install(tmp / "face-restorers", fixed_box=FACE))
    with client:
        yield client, tmp / "face-restorers"
    state.close()


def request(**fields) -> dict:
    return {"prompt": "a face", "steps": 2, "width": 64, "height": 64, "seed": 1, **fields}


def generate(client, path, body) -> tuple[np.ndarray, dict]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).convert("RGB")
    return np.asarray(image).astype(int), json.loads(data["info"])


def face_centre(pixels: np.ndarray) -> np.ndarray:
    return pixels[21:28, 21:28]


def far_from_face(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return pixels[44:], pixels[:, 44:]


def same_far_from_face(a: np.ndarray, b: np.ndarray) -> bool:
    return all((x == y).all() for x, y in zip(far_from_face(a), far_from_face(b), strict=True))


def test_face_restorers_are_listed(api_with_restorers):
    client, folder = api_with_restorers
    listed = client.get("/sdapi/v1/face-restorers").json()
    assert sorted(listed, key=lambda r: r["name"]) == [{"name": "CodeFormer", "cmd_dir": str(folder)},
                                                       {"name": "GFPGAN", "cmd_dir": str(folder)}]


def test_restore_faces_restores_with_the_named_model(api_with_restorers):
    client, _ = api_with_restorers
    plain, plain_info = generate(client, "/sdapi/v1/txt2img", request())
    assert plain_info["restore_faces"] is False and plain_info["face_restoration_model"] is None
    assert "Face restoration" not in plain_info["infotexts"][0]
    gfpgan, info = generate(client, "/sdapi/v1/txt2img", request(
        restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"}))
    # Inverted by the GFPGAN-style model (through two bilinear warps: close, not exact) ...
    assert np.abs(face_centre(gfpgan) - (255 - face_centre(plain))).mean() < 12
    assert np.abs(face_centre(plain) - 127).mean() > 30  # (so inverting really changes it)
    assert same_far_from_face(gfpgan, plain)  # ... and nothing else changed
    assert info["restore_faces"] is True and info["face_restoration_model"] == "GFPGAN"
    assert "Face restoration: GFPGAN" in info["infotexts"][0]
    assert "sdedge_warnings" not in info


def test_option_face_restoration_and_code_former_weight(api_with_restorers):
    client, _ = api_with_restorers
    plain, _ = generate(client, "/sdapi/v1/txt2img", request())
    # restore_faces null → option face_restoration; the default model is CodeFormer, weight 0.5 → grey.
    grey, info = generate(client, "/sdapi/v1/txt2img", request(override_settings={"face_restoration": True}))
    assert np.abs(face_centre(grey) - 128).max() <= 2 and same_far_from_face(grey, plain)
    assert "Face restoration: CodeFormer" in info["infotexts"][0]
    inverted, _ = generate(client, "/sdapi/v1/txt2img", request(
        restore_faces=True, override_settings={"code_former_weight": 1.0}))
    assert np.abs(face_centre(inverted) - (255 - face_centre(plain))).mean() < 12
    # The field wins over the option.
    kept, info = generate(client, "/sdapi/v1/txt2img", request(
        restore_faces=False, override_settings={"face_restoration": True}))
    assert (kept == plain).all() and info["restore_faces"] is False


def test_img2img_restores_before_the_overlay(api_with_restorers):
    """A1111 restores each decoded image before colour correction and the inpainting overlay: with a mask that
    repaints nothing, the overlay puts the init image back over the restored face."""
    client, _ = api_with_restorers
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    init.save(buffer, "PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 0).save(buffer, "PNG")
    body = request(init_images=[png], mask=base64.b64encode(buffer.getvalue()).decode(), inpaint_full_res=False,
                   mask_blur=0, restore_faces=True, override_settings={"face_restoration_model": "GFPGAN"})
    pixels, info = generate(client, "/sdapi/v1/img2img", body)
    assert (pixels == np.asarray(init)).all() and info["restore_faces"] is True


def test_code_former_weight_is_bounded(api_with_restorers):
    client, _ = api_with_restorers
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64,
                                                      "override_settings": {"code_former_weight": 2}})
    assert response.status_code == 422 and "code_former_weight" in response.text


def test_without_a_restorer_the_image_is_made_and_the_request_is_told(demo_bundle, tmp_path, caplog):
    state, client = client_for(demo_bundle, tmp_path, tmp_path / "face-restorers")  # an empty folder
    with client, caplog.at_level(logging.WARNING):
        assert client.get("/sdapi/v1/face-restorers").json() == []
        pixels, info = generate(client, "/sdapi/v1/txt2img", {"prompt": "a face", "steps": 2, "width": 64,
                                                               "height": 64, "restore_faces": True})
    state.close()
    assert pixels.shape == (64, 64, 3)
    assert info["restore_faces"] is True and info["face_restoration_model"] == "CodeFormer"
    warning = next(w for w in info["sdedge_warnings"] if w.startswith("restore_faces:"))
    assert "'CodeFormer' is not installed" in warning and "not restored" in warning
    assert any("'CodeFormer' is not installed" in r.getMessage() for r in caplog.records)


def test_request_field_resolves_in_the_plan():
    options = dict(DEFAULTS, face_restoration=True, face_restoration_model="GFPGAN", code_former_weight=0.2)
    plan = plan_txt2img(Txt2ImgRequest(prompt="a", steps=1, width=64, height=64), options)
    assert (plan.report.restore_faces, plan.report.face_restoration_model, plan.report.code_former_weight) == (
        True, "GFPGAN", 0.2)
    off = plan_txt2img(Txt2ImgRequest(prompt="a", steps=1, width=64, height=64, restore_faces=False), options)
    assert (off.report.restore_faces, off.report.face_restoration_model) == (False, None)

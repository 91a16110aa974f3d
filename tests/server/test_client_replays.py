"""Replays of what Open WebUI, SillyTavern and LibreChat send (open-webui
`backend/open_webui/routers/images.py`,
SillyTavern's Stable Diffusion extension, LibreChat `api/app/clients/tools/structured/StableDiffusion.js`),
with their
extra fields and headers, checking the response fields each client reads. Sizes and steps are cut to the tiny
model's 64 px / 2 steps; every key the client sends is kept."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from service.a1111.infotext import parse_infotext
from tests.sdapi_server import SECOND, decode, running_server, wait_until


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    with running_server(demo_bundle, tmp_path_factory.mktemp("replays")) as url:
        yield url


def basic(auth: str) -> dict[str, str]:
    """What both clients send even with no credentials configured: `Basic ` + base64 of the (empty) string."""
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def has_route(server: str, path: str) -> bool:
    r = requests.get(f"{server}/sdapi/v1/{path}", timeout=10)
    return not (r.status_code == 404 and r.json() == {"detail": "Not Found"})


def test_open_webui(server):
    s = requests.Session()
    s.headers.update({"authorization": "Basic " + base64.b64encode(b"").decode()})
    base = f"{server}/sdapi/v1"
    assert s.get(f"{base}/options", timeout=10).ok  # "verify URL"
    models = s.get(f"{base}/sd-models", timeout=10).json()
    ids = {m["title"]: m["model_name"] for m in models}
    assert {"sdedge-tiny", SECOND} == set(ids.values())
    current = s.get(f"{base}/options", timeout=10).json()["sd_model_checkpoint"]
    assert current in ids
    # Set model: GET the whole options dict, change the checkpoint, POST all of it back.
    target = next(title for title, name in ids.items() if name == SECOND)
    options = s.get(f"{base}/options", timeout=10).json()
    options["sd_model_checkpoint"] = target
    r = s.post(f"{base}/options", json=options, timeout=60)
    assert r.status_code == 200 and r.json() is None
    assert s.get(f"{base}/options", timeout=10).json()["sd_model_checkpoint"] == target
    # Generate with IMAGE_SIZE/IMAGE_STEPS and AUTOMATIC1111_PARAMS merged into the body.
    body = {"prompt": "a lighthouse", "batch_size": 2, "width": 64, "height": 64, "steps": 2,
            "negative_prompt": "", "cfg_scale": 7, "sampler_name": "Euler a", "scheduler": "Automatic"}
    res = s.post(f"{base}/txt2img", json=body, timeout=120).json()
    assert len(res["images"]) == 2 and all(decode(im).format == "PNG" for im in res["images"])
    info = json.loads(res["info"])  # stored as the image's metadata
    assert info["sd_model_name"] == SECOND and info["batch_size"] == 2
    options["sd_model_checkpoint"] = current
    assert s.post(f"{base}/options", json=options, timeout=60).ok


def test_sillytavern(server):
    s = requests.Session()
    s.headers.update(basic(""))
    base = f"{server}/sdapi/v1"
    assert s.get(f"{base}/options", timeout=10).ok  # /api/sd/ping
    upscalers = [u["name"] for u in s.get(f"{base}/upscalers", timeout=10).json()]
    latent = [u["name"] for u in s.get(f"{base}/latent-upscale-modes", timeout=10).json()]
    assert "Lanczos" in upscalers + latent
    assert all("model_name" in v for v in s.get(f"{base}/sd-vae", timeout=10).json())
    for path in ("samplers", "schedulers"):
        if has_route(server, path):
            assert all("name" in item for item in s.get(f"{base}/{path}", timeout=10).json())
    titles = [m["title"] for m in s.get(f"{base}/sd-models", timeout=10).json()]
    current = s.get(f"{base}/options", timeout=10).json()["sd_model_checkpoint"]
    assert current in titles
    assert s.post(f"{base}/options", json={"sd_model_checkpoint": current}, timeout=60).ok

    def idle():
        p = s.get(f"{base}/progress", timeout=10).json()
        return p["progress"] == 0 and p["state"]["job_count"] == 0

    wait_until(idle, timeout=20)
    # The whole client body goes through, its own `url` and `auth` keys included; seed omitted when random.
    body = {
        "url": server, "auth": "", "prompt": "a cat, masterpiece", "negative_prompt": "lowres",
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 2, "cfg_scale": 7, "width": 64, "height": 64,
        "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0,
        "denoising_strength": 0.7, "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
        "override_settings_restore_afterwards": True, "clip_skip": 2, "save_images": True, "send_images": True,
        "do_not_save_grid": False, "do_not_save_samples": False,
    }
    res = s.post(f"{base}/txt2img", json=body, timeout=120).json()
    image = decode(res["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    parsed = parse_infotext(image.info["parameters"])
    assert parsed["Clip skip"] == "2" and parsed["Sampler"] == "DPM++ 2M"
    assert s.get(f"{base}/options", timeout=10).json()["CLIP_stop_at_last_layers"] == 1.0  # restored
    assert s.post(f"{base}/interrupt", timeout=10).json() == {}  # sent when the browser goes away


def test_librechat(server):
    # No auth header, no model selection; LibreChat's SDXL defaults are cfg 4.5, 22 steps, 1024 px.
    body = {"prompt": "a red bicycle", "negative_prompt": "blurry", "cfg_scale": 4.5, "steps": 2, "width": 64,
            "height": 64}
    data = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120).json()
    info = json.loads(data["info"])
    assert (info["width"], info["height"]) == (64, 64) and isinstance(info["seed"], int)
    summary = info["infotexts"][0].split("\n")[-1]  # LibreChat shows the last line as the parameters
    assert summary.startswith("Steps: 2, Sampler: ") and "CFG scale: 4.5" in summary
    assert f"Seed: {info['seed']}" in summary and base64.b64decode(data["images"][0])[:8] == b"\x89PNG\r\n\x1a\n"

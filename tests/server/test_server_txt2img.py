"""The real server over HTTP: txt2img returns PNGs with A1111's infotext; bad input gets a 4xx and the server
keeps serving."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from PIL import Image

from service.a1111.infotext import parse_infotext
from tests.sdapi_server import running_server


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    with running_server(demo_bundle, tmp_path_factory.mktemp("server"), second_model=False) as url:
        yield url


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_png_with_infotext(server):
    body = {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 1234, "steps": 3,
            "width": 72, "height": 136, "sampler_name": "Euler", "unknown_key": "ignored"}
    r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"images", "parameters", "info"}
    assert len(data["images"]) == 1 and not data["images"][0].startswith("data:")
    image = decode(data["images"][0])
    assert image.format == "PNG" and image.size == (72, 136)
    infotext = image.info["parameters"]
    parsed = parse_infotext(infotext)
    assert parsed["Prompt"] == "a red circle"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Steps"] == "3" and parsed["Sampler"] == "Euler" and parsed["Seed"] == "1234"
    assert parsed["Size-1"] == "72" and parsed["Size-2"] == "136"
    assert parsed["CFG scale"] == "7.0" and parsed["Schedule type"] == "Automatic"
    assert r.headers.get("X-Task-Id", "").startswith("task(txt2img-")
    info = json.loads(data["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["infotexts"] == [infotext]
    assert data["parameters"]["prompt"] == "a red circle" and data["parameters"]["sampler_index"] == "Euler"


def test_batch_n_iter_and_random_seed(server):
    body = {"prompt": "x", "seed": -1, "steps": 2, "width": 64, "height": 64, "batch_size": 2, "n_iter": 2}
    r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert len(data["images"]) == 4
    seed = info["seed"]
    assert 0 <= seed <= 4294967293
    assert info["all_seeds"] == [seed, seed + 1, seed + 2, seed + 3]
    seeds_in_png = [int(parse_infotext(decode(b).info["parameters"])["Seed"]) for b in data["images"]]
    assert seeds_in_png == info["all_seeds"]


def test_same_seed_same_bytes(server):
    body = {"prompt": "y", "seed": 7, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler a"}
    a = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120).json()
    b = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120).json()
    assert a["images"] == b["images"]


def test_lenient_coercion(server):
    body = {"prompt": "z", "seed": "5", "steps": 2.7, "width": "64", "height": 64, "cfg_scale": 7, "n_iter": None}
    r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["steps"] == 2 and info["seed"] == 5


@pytest.mark.parametrize(
    "bad",
    [{"width": 0}, {"width": 100}, {"height": -8}, {"steps": 0}, {"batch_size": -1}, {"steps": "many"},
     {"cfg_scale": "high"}, {"prompt": ["a", "b"]}, {"n_iter": 0}],
)
def test_bad_input_gets_4xx_and_server_keeps_serving(server, bad):
    body = {"prompt": "q", "steps": 2, "width": 64, "height": 64, **bad}
    r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()
    assert {"error", "detail", "body", "errors"} <= set(err)
    ok = requests.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "q", "steps": 1, "width": 64, "height": 64},
                       timeout=60)
    assert ok.status_code == 200


def test_malformed_json_is_4xx(server):
    r = requests.post(f"{server}/sdapi/v1/txt2img", data="{not json", headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 422


def test_models_and_options(server):
    models = requests.get(f"{server}/sdapi/v1/sd-models", timeout=10).json()
    assert len(models) == 1
    m = models[0]
    assert m["model_name"] == "sdedge-tiny" and m["title"] == f"sdedge-tiny [{m['hash']}]"
    assert len(m["hash"]) == 10 and m["sha256"].startswith(m["hash"])
    options = requests.get(f"{server}/sdapi/v1/options", timeout=10).json()
    assert options["sd_model_checkpoint"] == m["title"]
    assert options["samples_format"] == "png"
    r = requests.post(f"{server}/sdapi/v1/options", json=options, timeout=10)
    assert r.status_code == 200 and r.json() is None


def _combinations():
    from engine.samplers import SAMPLERS
    from engine.schedules import SCHEDULERS

    return [(s, c) for s in SAMPLERS for c in (spec.label for spec in SCHEDULERS.values())]


@pytest.mark.parametrize("sampler,scheduler", _combinations())
def test_every_sampler_and_scheduler_over_rest(server, sampler, scheduler):
    import numpy as np

    body = {"prompt": "a red circle", "seed": 3, "steps": 3, "width": 32, "height": 32,
            "sampler_name": sampler, "scheduler": scheduler}
    r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    image = decode(r.json()["images"][0])
    pixels = np.asarray(image)
    assert image.size == (32, 32) and np.isfinite(pixels).all() and pixels.std() > 0
    parsed = parse_infotext(image.info["parameters"])
    assert parsed["Sampler"] == sampler

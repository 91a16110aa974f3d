"""The real `sdedge serve` process saving images (--data-dir) and reading an init image by path
(--allow-local-images): A1111's folders and names, the infotext in the files, nothing outside the data dir."""

from __future__ import annotations

import base64
import datetime
import io
import json

import pytest
import requests
from PIL import Image

from tests.sdapi_server import ROOT, running_server


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("saving-server")
    images = workdir / "inputs"
    images.mkdir()
    Image.new("RGB", (64, 64), (30, 160, 60)).save(images / "green.png")
    repo_outputs = (ROOT / "outputs").exists()
    with running_server(demo_bundle, workdir, "--allow-local-images", str(images), second_model=False) as url:
        yield url, workdir
    assert (ROOT / "outputs").exists() == repo_outputs  # nothing landed in the server's working folder


def test_txt2img_and_img2img_files_as_a1111_writes_them(server):
    url, workdir = server
    day = datetime.datetime.now().strftime("%Y-%m-%d")
    body = {"prompt": "a green field", "seed": 99, "steps": 2, "width": 64, "height": 64, "batch_size": 2,
            "save_images": True}
    r = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["index_of_first_image"] == 1 and len(r.json()["images"]) == 3
    samples = workdir / "outputs" / "txt2img-images" / day
    assert sorted(p.name for p in samples.iterdir()) == ["00000-99.png", "00001-100.png"]
    assert Image.open(samples / "00001-100.png").info["parameters"] == info["infotexts"][2]
    grids = workdir / "outputs" / "txt2img-grids" / day
    assert [p.name for p in grids.iterdir()] == ["grid-0000.png"]
    assert Image.open(grids / "grid-0000.png").info["parameters"] == info["infotexts"][0]

    body = {"prompt": "a green field", "seed": 5, "steps": 2, "width": 64, "height": 64, "init_images": ["green.png"],
            "denoising_strength": 0.5, "save_images": True}
    r = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    saved = workdir / "outputs" / "img2img-images" / day / "00000-5.png"
    returned = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert list(Image.open(saved).getdata()) == list(returned.getdata())


def test_paths_outside_are_refused(server):
    url, workdir = server
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "init_images": ["../server.log"]}
    r = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=60)
    assert r.status_code == 403 and "--allow-local-images" in r.json()["detail"]
    r = requests.post(f"{url}/sdapi/v1/txt2img", timeout=60, json={
        "prompt": "x", "steps": 1, "width": 64, "height": 64, "save_images": True,
        "override_settings": {"outdir_txt2img_samples": str(workdir.parent)}})
    assert r.status_code == 422 and "--data-dir" in r.json()["detail"]

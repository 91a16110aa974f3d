"""The real `sdedge serve` process saving images (--data-dir) and reading an init image by path
(--allow-local-images): A1111's folders and names, the infotext in the files, nothing outside the data dir."""

from __future__ import annotations

import base64
import datetime
import io
import json

import grpc
import pytest
import requests
from PIL import Image

from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from service.rpc import convert as grpc_convert
from tests.sdapi_server import ROOT, running_server


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("saving-server")
    images = workdir / "inputs"
    images.mkdir()
    Image.new("RGB", (64, 64), (30, 160, 60)).save(images / "green.png")
    repo_outputs = (ROOT / "outputs").exists()
    with running_server(demo_bundle, workdir, "--allow-local-images", str(images), second_model=False,
                        grpc=True) as (url, target):
        yield url, workdir, target
    assert (ROOT / "outputs").exists() == repo_outputs  # nothing landed in the server's working folder


def test_txt2img_and_img2img_files_as_a1111_writes_them(server):
    url, workdir, _ = server
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
    url, workdir, _ = server
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "init_images": ["../server.log"]}
    r = requests.post(f"{url}/sdapi/v1/img2img", json=body, timeout=60)
    assert r.status_code == 403 and "--allow-local-images" in r.json()["detail"]
    r = requests.post(f"{url}/sdapi/v1/txt2img", timeout=60, json={
        "prompt": "x", "steps": 1, "width": 64, "height": 64, "save_images": True,
        "override_settings": {"outdir_txt2img_samples": str(workdir.parent)}})
    assert r.status_code == 422 and "--data-dir" in r.json()["detail"]


def test_grpc_saves_and_returns_the_grid_first(server):
    _, workdir, target = server
    day = datetime.datetime.now().strftime("%Y-%m-%d")
    with grpc.insecure_channel(target) as channel:
        r = pb_grpc.SdEdgeStub(channel).Txt2Img(pb.Txt2ImgRequest(
            prompt="grpc saves", seed=500, steps=1, width=64, height=64, batch_size=2, save_images=True), timeout=60)
    info = json.loads(r.info_json)
    assert info["index_of_first_image"] == 1 and len(r.images) == 3
    grid, first, second = r.images
    assert Image.open(io.BytesIO(grid.data)).size == (128, 64) and grid.seed == 0 and grid.infotext == ""
    assert (first.seed, second.seed) == (500, 501) and first.infotext == info["infotexts"][1]
    assert second.infotext == info["infotexts"][2]
    saved = workdir / "outputs" / "txt2img-images" / day
    names = sorted(p.name for p in saved.iterdir())  # numbers go on after the REST test's files
    assert [n[6:] for n in names[-2:]] == ["500.png", "501.png"] and int(names[-1][:5]) == int(names[-2][:5]) + 1


def test_grpc_images_with_a_grid_keep_their_own_seed_and_infotext():
    response = {"images": [b"\x89PNG-g", b"\x89PNG-0", b"\x89PNG-1"], "image_sources": [None, 0, 1]}
    info = {"all_seeds": [5, 6], "all_subseeds": [7, 8], "infotexts": ["grid", "zero", "one"],
            "index_of_first_image": 1}
    images = grpc_convert.images(response, info)
    assert [(im.index, im.seed, im.infotext) for im in images] == [(0, 0, ""), (1, 5, "zero"), (2, 6, "one")]
    del response["image_sources"]  # a REST-shaped response: positions after the grid are the generations
    images = grpc_convert.images(response, info)
    assert [(im.index, im.seed, im.infotext) for im in images] == [(0, 0, ""), (1, 5, "zero"), (2, 6, "one")]


def test_cmd_flags_report_the_folders(server):
    url, workdir, _ = server
    flags = requests.get(f"{url}/sdapi/v1/cmd-flags", timeout=10).json()
    assert flags["data_dir"] == str(workdir.resolve())
    assert flags["allow_local_images"] == str((workdir / "inputs").resolve())

"""Scripts with `save_images: true` write what A1111's scripts write (scripts/xyz_grid.py, prompt_matrix.py,
sd_upscale.py, loopback.py: their `images.save_image` calls): each cell's samples, and the script's own image
under A1111's base name (`xyz_grid-NNNN-<seed>`, `prompt_matrix-NNNN-<seed>`, the combined SD upscale image
as a sample, loopback's `grid-NNNN`); nothing without `save_images`."""

from __future__ import annotations

import base64
import datetime
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.images import b64, noise_image

SMALL = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("script-saving")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json",
                                     data_dir=tmp / "data"))
    (tmp / "data").mkdir()
    with TestClient(create_app(state)) as client:
        yield client, tmp / "data"
    state.close()


def post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def files(root) -> dict[str, list[str]]:
    """Saved files by folder relative to the data dir."""
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out.setdefault(str(path.parent.relative_to(root)), []).append(path.name)
    return out


def clear(root) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


def png(b64_png: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64_png)))


DAY = datetime.datetime.now().strftime("%Y-%m-%d")


def test_xyz_plot_saves_the_cells_and_the_grid_with_its_infotext(server):
    client, root = server
    clear(root)
    args = [1, "5, 6", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    r = post(client, "/sdapi/v1/txt2img", {**SMALL, "script_name": "X/Y/Z plot", "script_args": args,
                                           "save_images": True})
    info = json.loads(r["info"])
    saved = files(root)
    assert saved == {f"outputs/txt2img-images/{DAY}": ["00000-5.png", "00001-6.png"],
                     f"outputs/txt2img-grids/{DAY}": ["xyz_grid-0000-5.png"]}
    grid = Image.open(root / f"outputs/txt2img-grids/{DAY}/xyz_grid-0000-5.png")
    assert grid.info["parameters"] == info["infotexts"][0]
    assert "Script: X/Y/Z plot, X Type: Seed" in grid.info["parameters"]
    assert np.array_equal(np.asarray(grid.convert("RGB")), np.asarray(png(r["images"][0]).convert("RGB")))
    cell = Image.open(root / f"outputs/txt2img-images/{DAY}/00001-6.png")
    assert cell.info["parameters"] == info["infotexts"][2]  # the cell's own infotext, no Script entry
    assert "Script:" not in cell.info["parameters"]


def test_xyz_plot_with_a_z_axis_saves_each_sub_grid_too(server):
    """A1111 saves the plot and then one grid per Z value (`grid_count = z_count + 1`), even when the response
    leaves the sub-grids out."""
    client, root = server
    clear(root)
    args = [1, "5, 6", [], 0, "", [], 4, "1, 2", [], True, False, False, False, False, False, False, 0, False]
    r = post(client, "/sdapi/v1/txt2img", {**SMALL, "script_name": "X/Y/Z plot", "script_args": args,
                                           "save_images": True})
    info = json.loads(r["info"])
    grids = root / f"outputs/txt2img-grids/{DAY}"
    assert files(root)[f"outputs/txt2img-grids/{DAY}"] == ["xyz_grid-0000-5.png", "xyz_grid-0001-5.png",
                                                            "xyz_grid-0002-5.png"]
    assert len(files(root)[f"outputs/txt2img-images/{DAY}"]) == 4
    assert Image.open(grids / "xyz_grid-0000-5.png").info["parameters"] == info["infotexts"][0]
    z2 = Image.open(grids / "xyz_grid-0002-5.png")
    assert "Steps: 2," in z2.info["parameters"] and "Z Type" not in z2.info["parameters"]
    assert z2.width < Image.open(grids / "xyz_grid-0000-5.png").width  # one Z value's cells


def test_prompt_matrix_saves_samples_and_the_matrix_without_infotext(server):
    client, root = server
    clear(root)
    r = post(client, "/sdapi/v1/txt2img", {**SMALL, "prompt": "a circle|red", "script_name": "Prompt matrix",
                                           "save_images": True})
    info = json.loads(r["info"])
    assert files(root) == {f"outputs/txt2img-images/{DAY}": ["00000-11.png", "00001-11.png"],
                           f"outputs/txt2img-grids/{DAY}": ["prompt_matrix-0000-11.png"]}
    assert "parameters" not in Image.open(root / f"outputs/txt2img-grids/{DAY}/prompt_matrix-0000-11.png").info
    sample = Image.open(root / f"outputs/txt2img-images/{DAY}/00001-11.png")
    assert sample.info["parameters"] == info["infotexts"][2]


def test_sd_upscale_saves_only_the_combined_image(server):
    client, root = server
    clear(root)
    body = {**SMALL, "init_images": [b64(noise_image(64, 64, seed=3))], "denoising_strength": 0.5,
            "script_name": "SD upscale", "script_args": ["", 32, "Nearest", 1.5], "save_images": True}
    r = post(client, "/sdapi/v1/img2img", body)
    info = json.loads(r["info"])
    assert files(root) == {f"outputs/img2img-images/{DAY}": ["00000-11.png"]}  # no tiles, no grid
    saved = Image.open(root / f"outputs/img2img-images/{DAY}/00000-11.png")
    assert saved.size == (96, 96)
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(png(r["images"][0]).convert("RGB")))
    assert saved.info["parameters"] == info["infotexts"][0]
    assert "SD upscale overlap: 32" in saved.info["parameters"]


def test_loopback_saves_each_iteration_with_the_script_entries_and_the_grid(server):
    client, root = server
    clear(root)
    body = {**SMALL, "init_images": [b64(noise_image(64, 64, seed=4))], "denoising_strength": 0.5,
            "script_name": "Loopback", "script_args": [2, 0.4, "Linear", "None"], "save_images": True}
    r = post(client, "/sdapi/v1/img2img", body)
    assert len(r["images"]) == 3
    assert files(root) == {f"outputs/img2img-images/{DAY}": ["00000-11.png", "00001-12.png"],
                           f"outputs/img2img-grids/{DAY}": ["grid-0000.png"]}
    second = Image.open(root / f"outputs/img2img-images/{DAY}/00001-12.png").info["parameters"]
    assert "Final denoising strength: 0.4, Denoising curve: Linear" in second
    assert "parameters" not in Image.open(root / f"outputs/img2img-grids/{DAY}/grid-0000.png").info


def test_prompts_from_file_saves_each_lines_samples_but_no_batch_grid(server):
    """A1111's prompts_from_file sets `do_not_save_grid`: a batch of two saves its two samples only."""
    client, root = server
    clear(root)
    r = post(client, "/sdapi/v1/txt2img", {**SMALL, "batch_size": 2, "script_name": "Prompts from file or textbox",
                                           "script_args": [False, False, "start", "a red circle\na blue square"],
                                           "save_images": True})
    info = json.loads(r["info"])
    saved = files(root)
    assert saved == {f"outputs/txt2img-images/{DAY}": ["00000-11.png", "00001-12.png", "00002-11.png",
                                                       "00003-12.png"]}
    last = Image.open(root / f"outputs/txt2img-images/{DAY}/00003-12.png").info["parameters"]
    assert last == info["infotexts"][-1] and last.startswith("a blue square")


def test_scripts_save_nothing_without_save_images(server):
    client, root = server
    clear(root)
    post(client, "/sdapi/v1/txt2img", {**SMALL, "prompt": "a circle|red", "script_name": "Prompt matrix"})
    body = {**SMALL, "init_images": [b64(noise_image(64, 64, seed=4))], "denoising_strength": 0.5,
            "script_name": "Loopback", "script_args": [2, 0.4, "Linear", "None"]}
    post(client, "/sdapi/v1/img2img", body)
    assert files(root) == {}

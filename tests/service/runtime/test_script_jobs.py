"""Scripts run through the sdapi (issue 19): X/Y/Z plot, prompt matrix, prompts from file, SD upscale and
loopback each run in one job, and each cell is the image and infotext of the same request sent alone; the
script registry routes; always-on scripts; unknown names are A1111's 422."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.images import b64, noise_image
from tests.service.a1111.test_hires_checkpoint import linked_bundle

OTHER = "sdedge-other-schedule"  # a second checkpoint: the demo model with another noise schedule

SMALL = {"prompt": "a red circle", "negative_prompt": "blue", "steps": 2, "width": 64, "height": 64, "seed": 11,
         "sampler_name": "Euler", "override_settings": {"randn_source": "NV"}}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("scripts")
    schedule = json.loads((demo_bundle / "manifest.json").read_text()).get("noise_schedule", {})
    linked_bundle(demo_bundle, tmp / "models" / OTHER, name=OTHER, source_sha256="d" * 64,
                  noise_schedule={**schedule, "beta_end": 0.02})
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client, state
    state.close()


def png(b64_png: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64_png)))


def pixels(b64_png: str) -> np.ndarray:
    return np.asarray(png(b64_png).convert("RGB"))


def post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def xyz_args(x_type: int, x_values: str, y_type: int = 0, y_values: str = "", y_dropdown=None,
             include_lone_images: bool = True, csv_mode: bool = False) -> list:
    return [x_type, x_values, [], y_type, y_values, y_dropdown or [], 0, "", [], True, include_lone_images, False,
            False, False, False, False, 0, csv_mode]


def test_xyz_steps_by_sampler_returns_the_grid_then_cells_equal_to_single_requests(server):
    """The issue's must-show: X = Steps (index 4 on txt2img), Y = Sampler (index 9, read from the dropdown):
    the response is the grid, then the cells in x-fastest order; each cell's PNG and infotext equal the
    single request's, byte for byte."""
    client, _ = server
    samplers = ["Euler", "DDIM"]
    body = {**SMALL, "script_name": "x/y/z plot", "script_args": xyz_args(4, "1-2", 9, "", samplers)}
    r = post(client, "/sdapi/v1/txt2img", body)
    info = json.loads(r["info"])
    assert len(r["images"]) == 1 + 4
    assert info["index_of_first_image"] == 1
    grid = png(r["images"][0])
    assert "parameters" not in grid.info  # A1111's grid image carries no infotext
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # legends add a left and top band
    cells = [(steps, sampler) for sampler in samplers for steps in (1, 2)]
    for k, (steps, sampler) in enumerate(cells):
        single = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": steps, "sampler_name": sampler})
        single_info = json.loads(single["info"])
        assert base64.b64decode(r["images"][1 + k]) == base64.b64decode(single["images"][0]), (steps, sampler)
        assert info["infotexts"][1 + k] == single_info["infotexts"][0]
        assert png(r["images"][1 + k]).info["parameters"] == single_info["infotexts"][0]
    # The grid's infotext is the first cell's with the plot's parameters (A1111 run(): grid_infotext).
    main = info["infotexts"][0]
    assert main.startswith(info["infotexts"][1].rsplit(", Version:", 1)[0])
    assert 'Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: Sampler, Y Values: "Euler,DDIM"' in main
    assert info["all_seeds"] == [11] * 4
    # The grid is the cells laid out 2×2 below the legend band, each cell pasted unchanged.
    top = grid.height - 2 * 64
    left = grid.width - 2 * 64
    arr = np.asarray(grid.convert("RGB"))
    for k in range(4):
        x, y = left + (k % 2) * 64, top + (k // 2) * 64
        assert np.array_equal(arr[y:y + 64, x:x + 64], pixels(r["images"][1 + k]))


def test_xyz_without_lone_images_returns_only_the_grid_but_every_infotext(server):
    client, _ = server
    body = {**SMALL, "steps": 1, "script_name": "X/Y/Z plot",
            "script_args": xyz_args(1, "5, 6", include_lone_images=False)}
    info = json.loads(post(client, "/sdapi/v1/txt2img", body)["info"])
    assert info["all_seeds"] == [5, 6]
    assert len(info["infotexts"]) == 3  # A1111 keeps the cells' infotexts after dropping their images
    assert "Fixed X Values: \"5, 6\"" in info["infotexts"][0]
    assert "Seed: 6," in info["infotexts"][2]


def test_xyz_in_one_job(server, monkeypatch):
    """The whole plot is one queued job (A1111: one process_images task), with job_count = cells × n_iter."""
    from service.runtime import jobs

    client, state = server
    seen = []
    real = state.queue.submit

    def submit(job):
        seen.append(job)
        return real(job)

    monkeypatch.setattr(state.queue, "submit", submit)
    post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1, "script_name": "x/y/z plot",
                                       "script_args": xyz_args(6, "3, 5, 7")})
    assert len(seen) == 1 and isinstance(seen[0], jobs.Job)
    assert seen[0].progress.job_count == 3


def test_unknown_script_name_is_a1111s_422(server):
    client, _ = server
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "no such script"})
    assert r.status_code == 422
    assert r.json()["detail"] == "Script 'no such script' not found"
    assert r.json()["error"] == "HTTPException"
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "loopback"})  # img2img only
    assert r.status_code == 422 and r.json()["detail"] == "Script 'loopback' not found"


def test_alwayson_unknown_or_selectable_is_a1111s_422(server):
    client, _ = server
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert r.status_code == 422 and r.json()["detail"] == "Script 'ControlNet' not found"
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"x/y/z plot": {"args": []}}})
    assert r.status_code == 422
    assert r.json()["detail"] == "Cannot have a selectable script in the always on scripts params"


def test_alwayson_extra_options_args_change_the_result(server):
    """Extra options (always on) gives one arg per setting listed in extra_options_txt2img and puts it into
    override_settings (A1111 extra_options_section.py: before_process): clip skip 2 via its arg is clip skip 2."""
    client, state = server
    state.options.update({"extra_options_txt2img": ["CLIP_stop_at_last_layers"]})
    try:
        plain = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1})
        via_script = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1,
                                                        "alwayson_scripts": {"Extra options": {"args": [2]}}})
        via_override = post(client, "/sdapi/v1/txt2img", {
            **SMALL, "steps": 1, "override_settings": {**SMALL["override_settings"], "CLIP_stop_at_last_layers": 2}})
    finally:
        state.options.update({"extra_options_txt2img": []})
    assert via_script["images"][0] == via_override["images"][0]
    assert via_script["images"][0] != plain["images"][0]
    assert "Clip skip: 2" in json.loads(via_script["info"])["infotexts"][0]
    assert via_script["parameters"]["override_settings"] == SMALL["override_settings"]  # the echo is the request


def test_alwayson_ui_scripts_are_skipped_under_the_api(server):
    """Seed, Sampler and Refiner are setup_for_ui_only in A1111: their args are accepted, the fields win."""
    client, _ = server
    plain = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1})
    with_args = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1, "alwayson_scripts": {
        "seed": {"args": [99, True, 5, 0.5, 0, 0]}, "Sampler": {"args": [20, "DDIM", "Karras"]},
        "Refiner": {"args": [True, "x", 0.5]}}})
    assert with_args["images"][0] == plain["images"][0]


def test_scripts_and_script_info_shapes(server):
    client, _ = server
    listed = client.get("/sdapi/v1/scripts").json()
    assert listed["txt2img"][:3] == ["prompt matrix", "prompts from file or textbox", "x/y/z plot"]
    assert {"loopback", "sd upscale", "x/y/z plot"} <= set(listed["img2img"])
    assert {"refiner", "seed", "sampler", "extra options"} <= set(listed["txt2img"])
    info = client.get("/sdapi/v1/script-info").json()
    for item in info:
        assert set(item) == {"name", "is_alwayson", "is_img2img", "args"}
        for arg in item["args"]:
            assert set(arg) == {"label", "value", "minimum", "maximum", "step", "choices"}
    xyz = next(i for i in info if i["name"] == "x/y/z plot" and not i["is_img2img"])
    assert len(xyz["args"]) == 18 and xyz["args"][0]["label"] == "X type" and xyz["args"][0]["value"] == "Seed"
    assert xyz["args"][0]["choices"][4] == "Steps" and xyz["args"][0]["choices"][9] == "Sampler"
    seed = next(i for i in info if i["name"] == "seed" and not i["is_img2img"])
    assert seed["is_alwayson"] and [a["label"] for a in seed["args"]][:3] == ["Seed", "Extra", "Variation seed"]
    assert [i["is_img2img"] for i in info] == sorted(i["is_img2img"] for i in info)  # txt2img's first


def test_prompt_matrix_runs_every_combination(server):
    client, _ = server
    body = {**SMALL, "steps": 1, "prompt": "a circle|red|big", "script_name": "prompt matrix", "script_args": []}
    r = post(client, "/sdapi/v1/txt2img", body)
    info = json.loads(r["info"])
    assert info["all_prompts"] == ["a circle", "a circle, red", "a circle, big", "a circle, red, big"]
    assert len(r["images"]) == 5 and info["index_of_first_image"] == 1
    single = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1, "prompt": "a circle, red, big"})
    assert base64.b64decode(r["images"][4]) == base64.b64decode(single["images"][0])


def test_prompts_from_file_lines(server):
    client, _ = server
    text = 'a square\n\n--prompt "a small star" --steps 1 --seed 7\n'
    body = {**SMALL, "steps": 1, "prompt": "", "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", text]}
    r = post(client, "/sdapi/v1/txt2img", body)
    info = json.loads(r["info"])
    assert info["all_prompts"] == ["a square", "a small star"]
    assert "Seed: 7," in info["infotexts"][1]
    single = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1, "prompt": "a small star", "seed": 7})
    assert base64.b64decode(r["images"][1]) == base64.b64decode(single["images"][0])


def test_sd_upscale_tiles_and_combines(server):
    client, _ = server
    init = b64(noise_image(48, 48, seed=3))
    body = {**SMALL, "init_images": [init], "denoising_strength": 0.3, "width": 64, "height": 64,
            "script_name": "SD upscale", "script_args": [None, 32, "Lanczos", 2.0]}
    r = post(client, "/sdapi/v1/img2img", body)
    out = png(r["images"][0])
    assert out.size == (96, 96)  # 48 × 2, tiles of 64 overlapping by 32 → 2×2 tiles
    info = json.loads(r["info"])
    assert "SD upscale overlap: 32, SD upscale upscaler: Lanczos" in info["infotexts"][0]


def test_loopback_feeds_each_image_back_with_the_curved_strength(server):
    client, _ = server
    init = b64(noise_image(64, 64, seed=4))
    body = {**SMALL, "init_images": [init], "denoising_strength": 0.8, "script_name": "loopback",
            "script_args": [3, 0.2, "Linear", "None"]}
    r = post(client, "/sdapi/v1/img2img", body)
    assert len(r["images"]) == 1 + 3  # the grid of the three iterations, then each
    strengths = [png(im).info["parameters"] for im in r["images"][1:]]
    # A1111's calculate_denoising_strength, Linear: initial + (final - initial) * loop / (loops - 1)
    for loop, text in enumerate(strengths):
        assert f"Denoising strength: {0.8 + (0.2 - 0.8) * (loop / 2)}," in text
    assert "Final denoising strength: 0.2, Denoising curve: Linear, Version" in strengths[0]
    assert "Seed: 12," in strengths[1]  # the seed goes up by one each loop
    # Iteration 2 is the img2img of iteration 1's image.
    second = post(client, "/sdapi/v1/img2img", {**SMALL, "init_images": [r["images"][1]], "seed": 12,
                                                 "denoising_strength": 0.5, "inpainting_fill": 1})
    assert np.array_equal(pixels(second["images"][0]), pixels(r["images"][2]))
    # ... and its infotext is that request's with the script's two entries (p.extra_generation_params).
    alone = json.loads(second["info"])["infotexts"][0]
    assert strengths[1] == alone.replace(", Version:", ", Final denoising strength: 0.2, Denoising curve: Linear, "
                                                       "Version:")


def test_img2img_xyz_denoising_cells_equal_single_requests(server):
    client, _ = server
    labels = [o.label for o in __import__("service.a1111.scripts.xyz_grid", fromlist=["x"]).axis_options(True)]
    init = b64(noise_image(64, 64, seed=9))
    base = {**SMALL, "init_images": [init]}
    args = [labels.index("Denoising"), "0.3, 0.6", [], 0, "", [], 0, "", [], False, True, False, False, False,
            False, False, 0, False]
    r = post(client, "/sdapi/v1/img2img", {**base, "script_name": "x/y/z plot", "script_args": args})
    assert len(r["images"]) == 3
    assert png(r["images"][0]).size == (128, 64)  # no legend: the bare 2×1 grid
    assert r["parameters"]["init_images"] is None  # include_init_images false, as for any img2img request
    for k, strength in enumerate((0.3, 0.6)):
        single = post(client, "/sdapi/v1/img2img", {**base, "denoising_strength": strength})
        assert base64.b64decode(r["images"][1 + k]) == base64.b64decode(single["images"][0])


def test_an_interrupt_stops_the_whole_script(server):
    """One job, one interrupt: interrupting during the first cell leaves the later cells unrun."""
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.runtime.generate import submit

    _, state = server

    def interrupt(job):
        if job.progress.sampling_step >= 1:  # during the first cell's sampling
            job.interrupt()

    req = Txt2ImgRequest(**{**SMALL, "steps": 3, "script_name": "x/y/z plot", "script_args": xyz_args(1, "1, 2, 3")})
    job, finish = submit(state, req, listener=interrupt)
    result = job.future.result(timeout=120)
    assert result.interrupted and len(result.runs) == 1
    response = finish(result)
    assert len(response["images"]) == 1 + 3  # the grid, the interrupted cell, two blank cells (A1111)


def test_xyz_checkpoint_axis_cells_equal_single_requests_on_each_model(server):
    """Checkpoint name (an override of sd_model_checkpoint per cell, A1111 apply_checkpoint), in csv mode."""
    client, state = server
    labels = [o.label for o in __import__("service.a1111.scripts.xyz_grid", fromlist=["x"]).axis_options(False)]
    names = [state.models.find("sdedge-tiny").title, OTHER]
    args = [labels.index("Checkpoint name"), ", ".join(names), [], 0, "", [], 0, "", [], True, True, False, False,
            False, False, False, 0, True]
    r = post(client, "/sdapi/v1/txt2img", {**SMALL, "steps": 1, "script_name": "x/y/z plot", "script_args": args})
    assert len(r["images"]) == 3
    for k, name in enumerate(names):
        single = post(client, "/sdapi/v1/txt2img", {
            **SMALL, "steps": 1, "override_settings": {**SMALL["override_settings"], "sd_model_checkpoint": name}})
        assert base64.b64decode(r["images"][1 + k]) == base64.b64decode(single["images"][0])
    assert r["images"][1] != r["images"][2]
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": [
        labels.index("Checkpoint name"), "nope", [], 0, "", [], 0, "", [], True, True, False, False, False, False,
        False, 0, True]})
    assert unknown.status_code == 422 and "Unknown checkpoint: nope" in unknown.json()["detail"]


@pytest.mark.parametrize(("name", "args"), [
    ("x/y/z plot", [{"a": 1}, {"b": 2}]), ("x/y/z plot", [4, ["1"], [], 99]), ("x/y/z plot", [4, "1-3 (+0)"]),
    ("prompt matrix", [False, False, "sideways"]), ("prompts from file or textbox", [False, False, "start", ""]),
    ("prompts from file or textbox", [False, False, "start", {"x": 1}]),
])
def test_bad_script_args_are_422_and_the_server_keeps_serving(server, name, args):
    client, _ = server
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": name, "script_args": args})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("script_args: ")
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 1}).status_code == 200

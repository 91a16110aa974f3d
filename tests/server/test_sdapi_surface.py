"""The sdapi surface A1111 clients call, driven through a real server with the `webuiapi` client (and plain
requests where webuiapi has no method): generation, options, models, progress, interrupt/skip, png-info, extras,
listings and sdedge's SSE stream, all on one job queue."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import requests
import webuiapi
from PIL import Image

from service.a1111.infotext import parse_infotext
from tests.sdapi_server import (
    FAST,
    SECOND,
    SECOND_SHA256,
    Background,
    decode,
    png_b64,
    progress,
    running_server,
    running_task,
    wait_until,
)


@pytest.fixture(scope="module")
def served(demo_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sdapi")
    with running_server(demo_bundle, workdir) as url:
        yield url, workdir


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def api(server):
    port = int(server.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2)


def titles(server) -> dict[str, str]:
    return {m["model_name"]: m["title"] for m in requests.get(f"{server}/sdapi/v1/sd-models", timeout=10).json()}


def test_webuiapi_txt2img(api):
    result = api.txt2img(prompt="a red circle", negative_prompt="blurry", seed=3, width=64, height=64, steps=2)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.info["seed"] == 3 and result.info["all_seeds"] == [3]
    infotext = result.images[0].info["parameters"]
    assert result.info["infotexts"] == [infotext]
    parsed = parse_infotext(infotext)
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Steps"], parsed["Seed"]) == (
        "a red circle", "blurry", "2", "3")
    assert result.parameters["prompt"] == "a red circle"


def test_webuiapi_img2img(api):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    result = api.img2img(images=[init], prompt="a square", seed=5, width=64, height=64, steps=2,
                         denoising_strength=0.5)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.info["seed"] == 5
    assert parse_infotext(result.images[0].info["parameters"])["Denoising strength"] == "0.5"


def test_options_get_set_and_persist(api, served):
    server, workdir = served
    options = api.get_options()
    # A1111 types options with a non-zero int default as float; zero-default ints stay ints.
    assert options["jpeg_quality"] == 80.0 and isinstance(options["jpeg_quality"], float)
    assert options["CLIP_stop_at_last_layers"] == 1.0 and isinstance(options["eta_noise_seed_delta"], int)
    assert options["sd_model_checkpoint"] == titles(server)["sdedge-tiny"]
    # Open WebUI posts the whole GET body back.
    assert requests.post(f"{server}/sdapi/v1/options", json=options, timeout=30).json() is None
    try:
        assert api.set_options({"jpeg_quality": 90, "samples_format": "jpg"}) is None
        changed = api.get_options()
        assert changed["jpeg_quality"] == 90.0 and changed["samples_format"] == "jpg"
        stored = json.loads((workdir / "config.json").read_text())
        assert stored["jpeg_quality"] == 90 and stored["samples_format"] == "jpg"
        r = requests.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "jpeg", "seed": 4, **FAST}, timeout=60)
        image_b64 = r.json()["images"][0]
        assert decode(image_b64).format == "JPEG"
        info = requests.post(f"{server}/sdapi/v1/png-info", json={"image": image_b64}, timeout=30).json()
        assert info["info"] == json.loads(r.json()["info"])["infotexts"][0]
    finally:
        api.set_options({"jpeg_quality": 80, "samples_format": "png"})


@pytest.mark.parametrize("body", [{"jpeg_quality": "high"}, {"samples_format": "avif"}, {"no_such_option": 1},
                                  {"CLIP_stop_at_last_layers": 13}, {"enable_pnginfo": "maybe"},
                                  {"sd_model_checkpoint": "no-such-model"}])
def test_bad_option_values_are_4xx_and_change_nothing(server, body):
    before = requests.get(f"{server}/sdapi/v1/options", timeout=10).json()
    r = requests.post(f"{server}/sdapi/v1/options", json={"jpeg_quality": 95, **body}, timeout=30)
    assert 400 <= r.status_code < 500 and set(r.json()) >= {"error", "detail", "body", "errors"}
    assert requests.get(f"{server}/sdapi/v1/options", timeout=10).json() == before


def test_model_list_and_switch(api, server):
    models = api.get_sd_models()
    by_name = {m["model_name"]: m for m in models}
    assert set(by_name) == {"sdedge-tiny", SECOND}
    second = by_name[SECOND]
    assert second["title"] == f"{SECOND} [{SECOND_SHA256[:10]}]" and second["sha256"] == SECOND_SHA256
    first = by_name["sdedge-tiny"]
    try:
        api.util_set_model(SECOND)
        assert api.util_get_current_model() == second["title"]
        result = api.txt2img(prompt="switched", seed=1, **FAST)
        assert result.info["sd_model_name"] == SECOND and result.info["sd_model_hash"] == SECOND_SHA256[:10]
        assert parse_infotext(result.images[0].info["parameters"])["Model"] == SECOND
        for alias in (first["sha256"], first["hash"], first["filename"], "sdedge-tiny", second["title"]):
            assert api.set_options({"sd_model_checkpoint": alias}) is None
            expected = second["title"] if alias == second["title"] else first["title"]
            assert api.get_options()["sd_model_checkpoint"] == expected
    finally:
        api.set_options({"sd_model_checkpoint": first["title"]})


def test_override_settings(api, server):
    first, second = titles(server)["sdedge-tiny"], titles(server)[SECOND]
    body = {"prompt": "o", "seed": 1, **FAST, "override_settings": {"sd_model_checkpoint": SECOND,
                                                                     "CLIP_stop_at_last_layers": 2}}
    info = json.loads(requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=60).json()["info"])
    assert info["sd_model_name"] == SECOND and info["clip_skip"] == 2
    assert "Clip skip: 2" in info["infotexts"][0]
    options = api.get_options()
    assert options["sd_model_checkpoint"] == first and options["CLIP_stop_at_last_layers"] == 1.0
    # An unknown checkpoint in override_settings is a 422 naming it (A1111 silently runs the configured model;
    # a deliberate deviation, docs/compatibility.md).
    body["override_settings"] = {"sd_model_checkpoint": "nope"}
    refused = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=60)
    assert refused.status_code == 422 and "'nope'" in refused.json()["detail"]
    try:
        body.update(override_settings={"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": second},
                    override_settings_restore_afterwards=False)
        assert requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=60).status_code == 200
        options = api.get_options()
        assert options["CLIP_stop_at_last_layers"] == 2.0 and options["sd_model_checkpoint"] == second
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": first})
    bad = requests.post(f"{server}/sdapi/v1/txt2img", json={**FAST, "override_settings": {"no_such": 1}},
                        timeout=30)
    assert bad.status_code == 422


def test_samplers(api, server):
    if requests.get(f"{server}/sdapi/v1/samplers", timeout=10).status_code == 404:
        pytest.skip("no /samplers route in this build")
    names = [s["name"] for s in api.get_samplers()]
    assert "Euler" in names and "DPM++ 2M" in names


def test_progress_live_preview_and_interrupt(api, server):
    body = {"prompt": "long", "seed": 9, "steps": 1000, "width": 64, "height": 64, "n_iter": 3,
            "force_task_id": "task(interrupt-me)"}
    job = Background(requests.post, f"{server}/sdapi/v1/txt2img", json=body, timeout=300)
    running = running_task(server, "task(interrupt-me)", min_step=1)
    state = running["state"]
    assert state["job"] == "scripts_txt2img" and state["job_count"] == 3 and state["sampling_steps"] == 1000
    assert 0.01 < running["progress"] <= 1 and running["eta_relative"] >= 0
    internal = requests.post(f"{server}/internal/progress", json={"id_task": "task(interrupt-me)"}, timeout=10)
    assert internal.json()["active"] is True and internal.json()["progress"] >= 0
    # The preview appears every `show_progress_every_n_steps` (10) steps, at latent resolution.
    with_image = wait_until(lambda: (p := api.get_progress())["current_image"] and p)
    preview = decode(with_image["current_image"])
    assert preview.format == "PNG" and preview.size == (8, 8)
    assert api.get_progress()["current_image"] is not None
    assert progress(server, skip_current_image=True)["current_image"] is None
    assert api.interrupt() == {}
    r = job.result()
    assert r.status_code == 200 and r.headers["X-Task-Id"] == "task(interrupt-me)"
    data = r.json()
    assert len(data["images"]) == 1  # the partial first batch; the other two never ran
    assert decode(data["images"][0]).size == (64, 64)
    idle = progress(server)
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["state"]["interrupted"] is True
    done = requests.post(f"{server}/internal/progress", json={"id_task": "task(interrupt-me)"}, timeout=10).json()
    assert done == {"active": False, "queued": False, "completed": True, "progress": None, "eta": None,
                    "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}


def test_skip_ends_only_the_current_batch(api, server):
    body = {"prompt": "skip", "seed": 9, "steps": 1000, "width": 64, "height": 64, "n_iter": 2,
            "force_task_id": "task(skip-me)"}
    job = Background(requests.post, f"{server}/sdapi/v1/txt2img", json=body, timeout=300)
    running_task(server, "task(skip-me)", min_step=1)
    assert api.skip() is None
    after = running_task(server, "task(skip-me)", min_step=1, job_no=1)
    assert after["state"]["skipped"] is True
    api.interrupt()
    data = job.result().json()
    assert len(data["images"]) == 2  # the skipped batch and the interrupted one


def test_queued_job_shows_its_place_and_leaves_when_its_client_goes(server):
    long = Background(requests.post, f"{server}/sdapi/v1/txt2img", timeout=300,
                      json={"prompt": "l", "steps": 1000, **{k: 64 for k in ("width", "height")},
                            "force_task_id": "task(long)"})
    running_task(server, "task(long)")
    try:
        requests.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "q", **FAST, "force_task_id": "task(gone)"},
                      timeout=1.0)
    except requests.ReadTimeout:
        pass
    queued = requests.post(f"{server}/internal/progress", json={"id_task": "task(gone)"}, timeout=10).json()
    tasks = requests.get(f"{server}/internal/pending-tasks", timeout=10).json()
    assert (queued["queued"] and queued["textinfo"] == "In queue: 1/1") or "task(gone)" not in tasks["tasks"]
    wait_until(lambda: "task(gone)" not in requests.get(f"{server}/internal/pending-tasks", timeout=10).json()["tasks"],
               timeout=10)
    requests.post(f"{server}/sdapi/v1/interrupt", timeout=10)
    assert long.result().status_code == 200
    started = [job_id for _, job_id in requests.get(f"{server}/sdedge/v1/queue", timeout=10).json()["started"]]
    assert "task(gone)" not in started


def read_events(response) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    name = None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            if name == "end":
                break
    return events


def test_sse_stream_of_a_task(api, server):
    api.set_options({"show_progress_every_n_steps": 1})
    try:
        # A long job holds the worker so the streamed task is certainly still queued when the stream opens.
        blocker = Background(requests.post, f"{server}/sdapi/v1/txt2img", timeout=300,
                             json={"prompt": "b", "steps": 1000, "width": 64, "height": 64,
                                   "force_task_id": "task(sse-blocker)"})
        running_task(server, "task(sse-blocker)")
        job = Background(requests.post, f"{server}/sdapi/v1/txt2img", timeout=60,
                         json={"prompt": "sse", "seed": 2, "steps": 4, "width": 64, "height": 64,
                               "force_task_id": "task(sse)"})
        wait_until(lambda: "task(sse)" in requests.get(f"{server}/internal/pending-tasks", timeout=10).json()["tasks"])
        response = requests.get(f"{server}/sdedge/v1/tasks/task(sse)/events", params={"wait": 30}, stream=True,
                                timeout=120)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        requests.post(f"{server}/sdapi/v1/interrupt", timeout=10)
        events = read_events(response)
        assert blocker.result().status_code == 200 and job.result().status_code == 200
    finally:
        api.set_options({"show_progress_every_n_steps": 10})
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["state"] == "done"
    states = [e["state"] for k, e in events if k == "progress"]
    assert states[0] == "queued" and states[-1] == "done" and "running" in states
    steps = [e["sampling_step"] for k, e in events if k == "progress" and e["state"] == "running"]
    assert steps == sorted(steps) and set(range(1, 5)) <= set(steps)  # no step is lost to a slow reader
    previews = [e for k, e in events if k == "preview"]
    assert previews and all(p["image"].startswith("data:image/png;base64,") for p in previews)
    missing = requests.get(f"{server}/sdedge/v1/tasks/task(none)/events", params={"wait": 0}, timeout=10)
    assert missing.status_code == 404


def test_sse_subscriber_may_come_before_the_task(server):
    stream = Background(requests.get, f"{server}/sdedge/v1/tasks/task(sse-early)/events", params={"wait": 30},
                        stream=True, timeout=120)
    time.sleep(0.2)
    r = requests.post(f"{server}/sdapi/v1/txt2img", timeout=60,
                      json={"prompt": "early", **FAST, "force_task_id": "task(sse-early)"})
    assert r.status_code == 200
    response = stream.result()
    assert response.status_code == 200
    events = read_events(response)
    # Whether the stream opened before the job was queued or after it ended, it ends with the job's end.
    assert events[-1] == ("end", {"id": "task(sse-early)", "state": "done", "interrupted": False, "error": None})
    assert [e["state"] for k, e in events if k == "progress"][-1] == "done"


def test_png_info(api, server):
    result = api.txt2img(prompt="(a cat:1.2), 'quoted', \"more\"", seed=11, **FAST)
    info = api.png_info(result.images[0])
    assert info.info == result.info["infotexts"][0]
    parameters = info.json["parameters"]
    assert parameters["Prompt"] == "(a cat:1.2), 'quoted', \"more\"" and parameters["Seed"] == "11"
    assert parameters["Size-1"] == "64" and parameters["Emphasis"] == "Original"
    # No metadata: empty info, A1111's defaults still there.
    plain = requests.post(f"{server}/sdapi/v1/png-info", json={"image": png_b64(Image.new("RGB", (8, 8)))},
                          timeout=10).json()
    assert plain["info"] == "" and plain["items"] == {} and plain["parameters"]["Clip skip"] == "1"
    gif = io.BytesIO()
    Image.new("P", (4, 4)).save(gif, format="GIF", comment=b"a gif\nSteps: 5, Sampler: Euler, Seed: 1")
    r = requests.post(f"{server}/sdapi/v1/png-info", json={"image": base64.b64encode(gif.getvalue()).decode()},
                      timeout=10).json()
    assert r["info"] == "a gif\nSteps: 5, Sampler: Euler, Seed: 1" and r["parameters"]["Steps"] == "5"
    bad = requests.post(f"{server}/sdapi/v1/png-info", json={"image": "not an image"}, timeout=10)
    assert bad.status_code == 422 and bad.json()["error"] == "HTTPException"


def test_extra_single_image(api):
    source = Image.effect_noise((64, 64), 40).convert("RGB")
    source.info["parameters"] = "a noise\nSteps: 5, Sampler: Euler, Seed: 1"
    result = api.extra_single_image(source, upscaler_1="Lanczos", upscaling_resize=2)
    out = result.images[0]
    assert out.size == (128, 128)
    # One LANCZOS pass of ×2 (A1111 Upscaler.upscale with scale 2) is PIL's own resize.
    assert list(out.convert("RGB").getdata()) == list(source.resize((128, 128), Image.LANCZOS).getdata())
    assert result.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    assert out.info["parameters"] == source.info["parameters"]
    assert out.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    cropped = api.extra_single_image(source, resize_mode=1, upscaling_resize_w=96, upscaling_resize_h=64,
                                     upscaler_1="Nearest")
    expected = source.resize((96, 96), Image.NEAREST).crop((0, 16, 96, 80))
    assert cropped.images[0].size == (96, 64)
    assert list(cropped.images[0].convert("RGB").getdata()) == list(expected.getdata())
    assert cropped.info == ("<p>Postprocess upscale to: 96x64, Postprocess crop to: 96x64, "
                            "Postprocess upscaler: Nearest</p>")
    untouched = api.extra_single_image(source)  # upscaler "None": nothing is done
    assert untouched.images[0].size == (64, 64) and untouched.info == "<p></p>"


def test_extra_batch_images(api, server):
    images = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    result = api.extra_batch_images(images, upscaler_1="Lanczos", upscaling_resize=1.5)
    assert [im.size for im in result.images] == [(96, 96), (96, 96)]
    assert result.images[1].getpixel((10, 10)) == (0, 0, 255)
    for bad in ({"upscaler_1": "ESRGAN_4x"}, {"upscaler_1": "Lanczos", "upscaling_resize": 1000},
                {"upscaler_1": "Lanczos", "upscaling_resize": 0}):
        body = {"imageList": [{"data": png_b64(images[0]), "name": "a"}], **bad}
        r = requests.post(f"{server}/sdapi/v1/extra-batch-images", json=body, timeout=30)
        assert r.status_code == 422, (bad, r.text)


KNOWN_ROUTES = [
    ("GET", "options"), ("GET", "cmd-flags"), ("GET", "sd-models"), ("GET", "sd-vae"), ("GET", "hypernetworks"),
    ("GET", "face-restorers"), ("GET", "realesrgan-models"), ("GET", "embeddings"), ("GET", "loras"),
    ("GET", "scripts"), ("GET", "script-info"), ("GET", "extensions"), ("GET", "memory"), ("GET", "progress"),
    ("GET", "upscalers"), ("GET", "latent-upscale-modes"), ("GET", "samplers"), ("GET", "schedulers"),
    ("GET", "prompt-styles"), ("POST", "refresh-checkpoints"),
    ("POST", "refresh-vae"), ("POST", "refresh-embeddings"), ("POST", "refresh-loras"), ("POST", "interrupt"),
    ("POST", "skip"), ("POST", "unload-checkpoint"), ("POST", "reload-checkpoint"), ("POST", "create/embedding"),
    ("POST", "create/hypernetwork"), ("POST", "train/embedding"), ("POST", "train/hypernetwork"),
]


def test_known_a1111_routes_answer(server):
    for method, path in KNOWN_ROUTES:
        r = requests.request(method, f"{server}/sdapi/v1/{path}", json={} if method == "POST" else None, timeout=60)
        assert r.status_code == 200, (path, r.status_code, r.text)
    assert requests.get(f"{server}/sdapi/v1/embeddings", timeout=10).json() == {"loaded": {}, "skipped": {}}
    assert "x/y/z plot" in requests.get(f"{server}/sdapi/v1/scripts", timeout=10).json()["txt2img"]
    memory = requests.get(f"{server}/sdapi/v1/memory", timeout=10).json()
    assert memory["ram"]["used"] > 0 and memory["ram"]["total"] >= memory["ram"]["used"]
    interrogate = requests.post(f"{server}/sdapi/v1/interrogate", json={"image": ""}, timeout=10)
    assert interrogate.status_code == 404 and interrogate.json()["detail"] == "Model not found"
    assert requests.get(f"{server}/internal/ping", timeout=10).json() == {}
    # After unload the next job loads its checkpoint again on the worker.
    requests.post(f"{server}/sdapi/v1/unload-checkpoint", timeout=10)
    assert requests.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "r", **FAST}, timeout=60).status_code == 200


@pytest.mark.parametrize("header", ["", "Basic ", "Basic Og==", "Bearer whatever"])
def test_authorization_header_ignored_without_auth(server, header):
    r = requests.get(f"{server}/sdapi/v1/options", headers={"Authorization": header}, timeout=10)
    assert r.status_code == 200

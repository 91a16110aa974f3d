"""Every field of A1111's txt2img and img2img requests (issue 19): a table with one row per field of
`Txt2ImgRequest` / `Img2ImgRequest` (a field added to the models without a row fails
`test_every_field_has_a_row`), each naming how the field's effect is seen: the request with the field changed,
against the same request without the change, in the context where A1111 reads the field (hires fields with
`enable_hr`, mask fields with a mask, ...), gives a different image, infotext, `info`, `parameters` echo, saved
files, status or task id. Fields A1111 itself accepts and never reads have an `ignored` row citing the spec:
they must change nothing.

Everything runs in one in-process server (the FastAPI app on the demo model, 64 px, 1–2 steps); only
`image_cfg_scale`, which only instruct-pix2pix models read, is checked on the plan (translate.plan_img2img with
an edit model), there being no such test model.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.a1111.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from tests.images import b64, box_mask, noise_image
from tests.service.a1111.test_hires_checkpoint import linked_bundle

OTHER = "sdedge-fields-other"  # a second checkpoint (refiner, hires checkpoint)
STYLE = "fields-style"
LORA_PROMPT = "a red circle <lora:not-installed:1>"

BASE = {"prompt": "a red circle", "negative_prompt": "blue", "steps": 1, "width": 64, "height": 64, "seed": 11,
        "subseed": 5, "sampler_name": "Euler"}
INIT = b64(noise_image(64, 64, seed=1))
BASE_IMG = {**BASE, "steps": 2, "init_images": [INIT]}
MASK = {"mask": b64(box_mask((64, 64), (16, 16, 48, 48)))}
HIRES = {"enable_hr": True, "denoising_strength": 0.5}
SAVE = {"save_images": True}
CHURN = {"steps": 2, "s_churn": 1.0}
XYZ_SEEDS = [1, "5, 6", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]


@dataclass(frozen=True)
class Row:
    """`change` sent on top of base + `context`; `observe` names what must differ (or, for "ignored", what
    must not): image, infotext, info, count, files, status, task_id, parameters, options, plan."""

    change: dict[str, Any]
    observe: str
    context: dict[str, Any] = field(default_factory=dict)
    why: str = ""  # for ignored fields: where A1111 says so


def common(img2img: bool) -> dict[str, Row]:
    strength = (Row({"denoising_strength": 0.3}, "image") if img2img
                else Row({"denoising_strength": 0.3}, "image", {**HIRES, "steps": 2}))
    return {
        "prompt": Row({"prompt": "a blue square"}, "image"),
        "negative_prompt": Row({"negative_prompt": "green"}, "image"),
        "styles": Row({"styles": [STYLE]}, "image"),
        "seed": Row({"seed": 12}, "image"),
        "subseed": Row({"subseed": 6}, "image", {"subseed_strength": 0.5}),
        "subseed_strength": Row({"subseed_strength": 0.5}, "image"),
        "seed_resize_from_h": Row({"seed_resize_from_h": 32}, "image", {"seed_resize_from_w": 32}),
        "seed_resize_from_w": Row({"seed_resize_from_w": 32}, "image", {"seed_resize_from_h": 32}),
        "sampler_name": Row({"sampler_name": "DDIM"}, "infotext"),
        "scheduler": Row({"scheduler": "karras"}, "infotext"),
        "batch_size": Row({"batch_size": 2}, "count"),
        "n_iter": Row({"n_iter": 2}, "count"),
        "steps": Row({"steps": 3}, "image"),
        "cfg_scale": Row({"cfg_scale": 2.0}, "image"),
        "width": Row({"width": 96}, "image"),
        "height": Row({"height": 96}, "image"),
        # No face restorer is installed: the request is reported (info's sdedge_warnings), not dropped.
        "restore_faces": Row({"restore_faces": True}, "info"),
        "tiling": Row({"tiling": True}, "image"),
        # sdedge honours do_not_save_* next to save_images (A1111 overwrites them; docs/compatibility.md).
        "do_not_save_samples": Row({"do_not_save_samples": True}, "files", SAVE),
        "do_not_save_grid": Row({"do_not_save_grid": True}, "files", {**SAVE, "batch_size": 2}),
        "eta": Row({"eta": 0.2}, "image", {"sampler_name": "Euler a", "steps": 3}),
        "denoising_strength": strength,
        # A1111 skips the uncond half on odd steps only (CFGDenoiser.forward): steps to reach step 1.
        "s_min_uncond": Row({"s_min_uncond": 100.0}, "image", {"steps": 4}),
        "s_churn": Row({"s_churn": 1.0}, "image", {"steps": 2}),
        "s_tmax": Row({"s_tmax": 0.5}, "image", CHURN),
        "s_tmin": Row({"s_tmin": 1000.0}, "image", CHURN),
        "s_noise": Row({"s_noise": 0.5}, "image", CHURN),
        "override_settings": Row({"override_settings": {"CLIP_stop_at_last_layers": 2}}, "infotext"),
        "override_settings_restore_afterwards": Row(
            {"override_settings_restore_afterwards": False}, "options",
            {"override_settings": {"CLIP_stop_at_last_layers": 2}}),
        "refiner_checkpoint": Row({"refiner_checkpoint": OTHER}, "infotext", {"steps": 2}),
        "refiner_switch_at": Row({"refiner_switch_at": 0.5}, "infotext",
                                 {"steps": 2, "refiner_checkpoint": OTHER}),
        "disable_extra_networks": Row({"disable_extra_networks": True}, "info", {"prompt": LORA_PROMPT}),
        "firstpass_image": Row({"firstpass_image": INIT}, "ignored",
                               why="a1111-api.md §3.1: UI-only, the API never decodes it"),
        "comments": Row({"comments": {"note": "x"}}, "ignored",
                        why="a1111-api.md §3.1: ignored, internally reset to {}"),
        "force_task_id": Row({"force_task_id": "task(fields-test)"}, "task_id"),
        "sampler_index": Row({"sampler_index": "DDIM"}, "infotext", {"sampler_name": None}),
        "send_images": Row({"send_images": False}, "count"),
        "save_images": Row({"save_images": True}, "files"),
        # Extra options' args are the values of the options extra_options_txt2img/img2img name (set by the
        # fixture to CLIP_stop_at_last_layers).
        "alwayson_scripts": Row({"alwayson_scripts": {"Extra options": {"args": [2]}}}, "infotext"),
        # A pasted infotext fills the fields the request leaves out: txt2img's cfg_scale; img2img takes only
        # sampler, steps, seed, refiner fields and settings (a1111-api.md §6.7): Clip skip.
        "infotext": (Row({"infotext": "a red circle\nSteps: 2, Sampler: Euler, Clip skip: 2"}, "infotext")
                     if img2img else Row({"infotext": "a red circle\nSteps: 1, CFG scale: 3, Sampler: Euler"},
                                         "image")),
    }


TXT2IMG: dict[str, Row] = {
    **common(img2img=False),
    "enable_hr": Row({"enable_hr": True}, "image", {"denoising_strength": 0.5}),
    "firstphase_width": Row({"firstphase_width": 48}, "image", {"firstphase_width": 32, "firstphase_height": 32}),
    "firstphase_height": Row({"firstphase_height": 48}, "image", {"firstphase_width": 32, "firstphase_height": 32}),
    "hr_scale": Row({"hr_scale": 1.5}, "image", HIRES),
    "hr_upscaler": Row({"hr_upscaler": "Nearest"}, "image", HIRES),
    "hr_second_pass_steps": Row({"hr_second_pass_steps": 3}, "image", HIRES),
    "hr_resize_x": Row({"hr_resize_x": 96}, "image", HIRES),
    "hr_resize_y": Row({"hr_resize_y": 96}, "image", HIRES),
    "hr_checkpoint_name": Row({"hr_checkpoint_name": OTHER}, "infotext", HIRES),
    "hr_sampler_name": Row({"hr_sampler_name": "DDIM"}, "infotext", HIRES),
    "hr_scheduler": Row({"hr_scheduler": "karras"}, "infotext", HIRES),
    "hr_prompt": Row({"hr_prompt": "a blue square"}, "image", HIRES),
    "hr_negative_prompt": Row({"hr_negative_prompt": "red"}, "image", HIRES),
    "script_name": Row({"script_name": "X/Y/Z plot"}, "count", {"script_args": XYZ_SEEDS}),
    "script_args": Row({"script_args": [1, "5, 6, 7", *XYZ_SEEDS[2:]]}, "count",
                       {"script_name": "X/Y/Z plot", "script_args": XYZ_SEEDS}),
}

LOOPBACK = [2, 0.5, "Linear", "None"]

IMG2IMG: dict[str, Row] = {
    **common(img2img=True),
    "init_images": Row({"init_images": [b64(noise_image(64, 64, seed=2))]}, "image"),
    "resize_mode": Row({"resize_mode": 1}, "image", {"init_images": [b64(noise_image(96, 64, seed=1))]}),
    "image_cfg_scale": Row({"image_cfg_scale": 1.5}, "plan"),
    "mask": Row(MASK, "image"),
    "mask_blur_x": Row({"mask_blur_x": 0}, "image", {**MASK, "inpaint_full_res": False}),
    "mask_blur_y": Row({"mask_blur_y": 0}, "image", {**MASK, "inpaint_full_res": False}),
    "mask_blur": Row({"mask_blur": 0}, "image", {**MASK, "inpaint_full_res": False}),
    "mask_round": Row({"mask_round": False}, "image", {**MASK, "inpaint_full_res": False}),
    "inpainting_fill": Row({"inpainting_fill": 1}, "image", MASK),
    "inpaint_full_res": Row({"inpaint_full_res": False}, "image", MASK),
    "inpaint_full_res_padding": Row({"inpaint_full_res_padding": 16}, "image", MASK),
    "inpainting_mask_invert": Row({"inpainting_mask_invert": 1}, "image", MASK),
    "initial_noise_multiplier": Row({"initial_noise_multiplier": 0.5}, "image"),
    "latent_mask": Row({"latent_mask": MASK["mask"]}, "ignored",
                       why="a1111-api.md §3.3: internal, the API never decodes it"),
    "include_init_images": Row({"include_init_images": True}, "parameters"),
    "script_name": Row({"script_name": "Loopback"}, "count", {"script_args": LOOPBACK}),
    "script_args": Row({"script_args": [3, *LOOPBACK[1:]]}, "count",
                       {"script_name": "Loopback", "script_args": LOOPBACK}),
}

ENDPOINTS = {"txt2img": (Txt2ImgRequest, TXT2IMG, BASE), "img2img": (Img2ImgRequest, IMG2IMG, BASE_IMG)}


def test_every_field_has_a_row():
    """A field added to the request models without a row here fails."""
    for name, (model, rows, _) in ENDPOINTS.items():
        assert set(model.model_fields) == set(rows), name
        for key, row in rows.items():
            assert key in row.change, (name, key)  # each row changes its own field
            assert (row.observe == "ignored") == bool(row.why), (name, key)


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict
    files: Counter

    @property
    def info(self) -> dict:
        return json.loads(self.body["info"])


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("every-field")
    linked_bundle(demo_bundle, tmp / "models" / OTHER, name=OTHER, source_sha256="e" * 64)
    (tmp / "styles.csv").write_text(f"name,prompt,negative_prompt\n{STYLE},\"{{prompt}}, shiny\",\"dull\"\n")
    (tmp / "data").mkdir()
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json",
                                     data_dir=tmp / "data", extra={"styles_file": str(tmp / "styles.csv")}))
    with TestClient(create_app(state)) as client:
        r = client.post("/sdapi/v1/options", json={"extra_options_txt2img": ["CLIP_stop_at_last_layers"],
                                                   "extra_options_img2img": ["CLIP_stop_at_last_layers"]})
        assert r.status_code == 200, r.text
        yield client, tmp / "data"
    state.close()


def send(server, endpoint: str, body: dict) -> Reply:
    client, root = server
    before = {p for p in root.rglob("*") if p.is_file()}
    r = client.post(f"/sdapi/v1/{endpoint}", json=body)
    new = {p for p in root.rglob("*") if p.is_file()} - before
    # Saved files by kind of folder (outputs/txt2img-images, ...-grids): names carry sequence numbers.
    files = Counter("/".join(p.relative_to(root).parts[:2]) for p in new)
    return Reply(r.status_code, r.json(), dict(r.headers), files)


def pixels(reply: Reply) -> list:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(im))).convert("RGB")).tolist()
            for im in reply.body["images"]]


def observed(kind: str, reply: Reply, server) -> Any:
    if kind == "status":
        return reply.status
    assert reply.status == 200, reply.body
    if kind == "image":
        return pixels(reply)
    if kind == "infotext":
        return reply.info["infotexts"]
    if kind == "info":
        return {k: v for k, v in reply.info.items() if k != "job_timestamp"}
    if kind == "count":
        return len(reply.body["images"])
    if kind == "files":
        return reply.files
    if kind == "task_id":
        return reply.headers.get("x-task-id")
    if kind == "parameters":
        return reply.body["parameters"]
    if kind == "options":  # what the server's options are after the request; then put back
        client, _ = server
        value = client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"]
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200
        return value
    raise AssertionError(kind)


ROWS = [(endpoint, key) for endpoint, (_, rows, _) in ENDPOINTS.items() for key in rows]


@pytest.mark.parametrize(("endpoint", "key"), ROWS, ids=[f"{e}-{k}" for e, k in ROWS])
def test_field_changes_what_a1111_changes(server, endpoint, key):
    model, rows, base = ENDPOINTS[endpoint]
    row = rows[key]
    if row.observe == "plan":
        return check_plan(endpoint, row)
    request = {**base, **row.context}
    unchanged = send(server, endpoint, request)
    changed = send(server, endpoint, {**request, **row.change})
    if row.observe == "ignored":
        for kind in ("image", "infotext", "info", "files"):
            assert observed(kind, changed, server) == observed(kind, unchanged, server), (key, kind)
        return
    if row.observe == "task_id":  # a generated id differs anyway: the header must be the one asked for
        assert observed("task_id", changed, server) == row.change["force_task_id"]
        assert observed("task_id", unchanged, server) != row.change["force_task_id"]
        return
    assert observed(row.observe, changed, server) != observed(row.observe, unchanged, server), key


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_the_same_request_twice_observes_the_same(server, endpoint):
    """What the rows compare is reproducible, so a difference is the changed field's doing."""
    _, _, base = ENDPOINTS[endpoint]
    first, second = (send(server, endpoint, {**base, **SAVE}) for _ in range(2))
    for kind in ("image", "infotext", "info", "count", "files", "parameters"):
        assert observed(kind, first, server) == observed(kind, second, server), kind


def check_plan(endpoint: str, row: Row) -> None:
    """image_cfg_scale: only instruct-pix2pix models read it (A1111 forces it to None for any other)."""
    from service.a1111.translate import plan_img2img

    base = Img2ImgRequest.model_validate({**BASE_IMG, **row.context})
    changed = Img2ImgRequest.model_validate({**BASE_IMG, **row.context, **row.change})
    options: dict = {}
    assert plan_img2img(changed, options, edit_model=True) != plan_img2img(base, options, edit_model=True)
    assert plan_img2img(changed, options).img2img == plan_img2img(base, options).img2img

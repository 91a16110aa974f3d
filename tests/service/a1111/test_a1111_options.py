"""Every A1111 v1.10.1 option key is accepted (issue 12): in POST /options and `override_settings`, stored and
reported back with A1111's typing, an unimplemented one warned about in `info` and the log; keys A1111 does not
know either stay refused; an unknown checkpoint override is a 422 naming it. Also the Gradio probes clients send
(`/queue/status`, `/config`)."""

from __future__ import annotations

import json
import logging

import pytest

from service.a1111.a1111_options import A1111_DEFAULTS, INFO_ONLY
from service.runtime.options import ALL_DEFAULTS, DEFAULTS, IMPLEMENTED, Options, unimplemented
from tests.sdapi_server import FAST

# What cyanic-sd-krita sends with every request (cyanic-sd-krita's client code), at its defaults and at values
# it may set.
KRITA_OVERRIDES = {"img2img_color_correction": False, "sd_hypernetwork": "None", "sd_unet": "Automatic",
                   "sd_model_refiner": "None"}

# A sample of A1111 1.10.1 keys from each part of the table: shared_options.py sections and built-in extensions.
A1111_KEYS = {"sd_unet": "Automatic", "sd_hypernetwork": "None", "sd_lora": "None", "lora_preferred_name":
              "Alias from file", "hypertile_enable_unet": False, "hypertile_max_tile_unet": 256,
              "canvas_hotkey_zoom": "Alt", "cross_attention_optimization": "Automatic", "ESRGAN_tile": 192,
              "img_max_size_mp": 200, "sd3_enable_t5": False, "save_images_replace_action": "Replace",
              "quicksettings_list": ["sd_model_checkpoint"], "keyedit_precision_attention": 0.1,
              "extra_options_cols": 1, "prevent_screen_sleep_during_generation": True,
              "sd_checkpoints_limit": 1, "sdxl_refiner_high_aesthetic_score": 6.0}


def test_table_has_a1111s_keys_and_defaults():
    assert len(A1111_DEFAULTS) > 300
    for key, default in A1111_KEYS.items():
        assert A1111_DEFAULTS[key] == default, key
    # sdedge's own values win where it implements the option, and every implemented key is reachable.
    assert set(DEFAULTS) <= set(ALL_DEFAULTS) and all(ALL_DEFAULTS[k] == DEFAULTS[k] for k in DEFAULTS)
    assert "img2img_color_correction" in IMPLEMENTED and "sd_unet" not in IMPLEMENTED


def test_unimplemented_reports_only_values_away_from_the_default():
    assert unimplemented({**ALL_DEFAULTS}) == []
    assert unimplemented({"sd_unet": "my-engine", "sd_hypernetwork": "None", "jpeg_quality": 50}) == ["sd_unet"]


def test_options_store_and_ignore_info_only(tmp_path):
    options = Options(tmp_path / "config.json")
    options.update({"sd_unet": "trt", "sd_vae_explanation": "<p>html</p>", "hypertile_max_tile_unet": 128.0})
    assert options.get("sd_unet") == "trt" and options.get("hypertile_max_tile_unet") == 128
    assert "sd_vae_explanation" not in options.snapshot()
    reloaded = Options(tmp_path / "config.json")
    assert reloaded.get("sd_unet") == "trt"
    view = reloaded.api_snapshot()  # A1111 modules/api/api.py: Api.get_config: non-zero int defaults come back as floats
    assert view["hypertile_max_tile_unet"] == 128.0 and isinstance(view["hypertile_max_tile_unet"], float)
    assert view["ESRGAN_tile"] == 192.0 and view["extra_networks_card_width"] == 0
    assert isinstance(view["extra_networks_card_width"], int)


@pytest.fixture(scope="module")
def client(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("options")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json",
                                     api_auth="user:secret"))
    state.load_default()
    with TestClient(create_app(state), headers={"Authorization": "Basic dXNlcjpzZWNyZXQ="}) as c:
        yield c
    state.close()


@pytest.mark.slow
def test_get_options_serves_every_a1111_key(client):
    options = client.get("/sdapi/v1/options").json()
    assert set(A1111_DEFAULTS) <= set(options)
    assert options["sd_unet"] == "Automatic" and options["hypertile_max_tile_unet"] == 256.0
    # A GET → POST round trip of the whole dict succeeds (clients do that).
    assert client.post("/sdapi/v1/options", json={k: v for k, v in options.items()
                                                 if k != "sd_model_checkpoint"}).status_code == 200


@pytest.mark.slow
def test_post_options_stores_unimplemented_keys_with_a_warning(client, caplog):
    with caplog.at_level(logging.WARNING, logger="service.runtime.options"):
        r = client.post("/sdapi/v1/options", json={**KRITA_OVERRIDES, "sd_unet": "engine-a",
                                                   "profiling_explanation": "ignored"})
    assert r.status_code == 200, r.text
    assert client.get("/sdapi/v1/options").json()["sd_unet"] == "engine-a"
    assert any("sd_unet='engine-a' is not implemented" in m for m in caplog.messages)
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "a", **FAST}).json()["info"])
    assert info["sdedge_warnings"] == ["option sd_unet='engine-a' is not implemented by sdedge and has no effect"]
    client.post("/sdapi/v1/options", json={"sd_unet": "Automatic"})
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "a", **FAST}).json()["info"])
    assert "sdedge_warnings" not in info  # A1111's info shape when nothing is off


@pytest.mark.slow
def test_override_settings_accept_every_a1111_key(client, caplog):
    body = {"prompt": "a", "seed": 3, **FAST, "override_settings": {**KRITA_OVERRIDES, **A1111_KEYS}}
    plain = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "seed": 3, **FAST})
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "sdedge_warnings" not in info  # all at A1111's defaults: nothing differs from A1111
    assert r.json()["images"] == plain.json()["images"]
    body["override_settings"] = {"sd_hypernetwork": "my-hn", "lora_functional": True}
    with caplog.at_level(logging.WARNING, logger="service.runtime.options"):
        info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sdedge_warnings"] == [
        "option sd_hypernetwork='my-hn' is not implemented by sdedge and has no effect",
        "option lora_functional=True is not implemented by sdedge and has no effect"]
    assert any("override_settings: option sd_hypernetwork" in m for m in caplog.messages)
    assert client.get("/sdapi/v1/options").json()["sd_hypernetwork"] == "None"  # restored afterwards


def test_keys_a1111_does_not_know_stay_refused(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"no_such_option": 1}})
    assert r.status_code == 422 and "no_such_option" in r.json()["detail"]
    r = client.post("/sdapi/v1/options", json={"no_such_option": 1})
    assert r.status_code == 422 and "no_such_option" in r.json()["detail"]
    # A real key with a value of the wrong type is refused too, naming the key.
    r = client.post("/sdapi/v1/options", json={"hypertile_enable_unet": "yes"})
    assert r.status_code == 422 and "hypertile_enable_unet" in r.json()["detail"]


@pytest.mark.slow
def test_unknown_checkpoint_override_is_a_422_naming_it(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"sd_model_checkpoint": "nope.ckpt"}})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail", "body", "errors"}
    assert "'nope.ckpt'" in r.json()["detail"] and "sd_model_checkpoint" in r.json()["detail"]
    assert client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {
        "sd_model_checkpoint": "sdedge-tiny"}}).status_code == 200


def test_info_only_keys_are_not_listed_but_accepted():
    assert not INFO_ONLY & set(ALL_DEFAULTS)


# -- Gradio probes -----------------------------------------------------------------------------------------------

NO_AUTH = {"Authorization": ""}  # replaces the client's credentials


def test_queue_status_has_gradios_shape(client):
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "a", **FAST}).status_code == 200
    r = client.get("/queue/status", headers=NO_AUTH)  # outside --api-auth, as A1111's Gradio routes are
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"msg", "rank", "queue_size", "avg_event_process_time",
                         "avg_event_concurrent_process_time", "rank_eta", "queue_eta"}
    assert body["msg"] == "estimation" and body["queue_size"] == 0 and body["rank"] is None
    assert body["queue_eta"] == 0  # nothing waits
    assert body["avg_event_process_time"] > 0  # measured on the jobs that ran


def test_config_answers_without_auth(client):
    r = client.get("/config", headers=NO_AUTH)
    assert r.status_code == 200  # aiyabot reads a 401 as Gradio auth and starts posting /login
    body = r.json()
    assert body["version"] == "3.41.2" and body["mode"] == "blocks" and body["components"] == []
    # The API itself stays behind --api-auth.
    assert client.get("/sdapi/v1/options", headers=NO_AUTH).status_code == 401


def test_server_control_routes_absent_without_the_flag(client):
    for route in ("server-kill", "server-restart", "server-stop"):
        r = client.post(f"/sdapi/v1/{route}")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert client.get("/sdapi/v1/cmd-flags").json()["api_server_stop"] is False

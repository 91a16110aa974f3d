"""Bundles of every family in one models folder: /sd-models lists each with A1111's fields, and hires fix on another
checkpoint continues only latents that checkpoint's VAE decodes (SD 1.x ↔ SD 2.x, SDXL ↔ its refiner), with a 422
for SD 1.x ↔ SDXL."""

from __future__ import annotations

import pytest

from tests.service.a1111.test_hires_checkpoint import FIRST, linked_bundle

FAMILIES = {"tiny-sd2": "sd2", "tiny-xl": "sdxl", "tiny-xl-refiner": "sdxl-refiner"}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("families")
    models = tmp / "models"
    for i, (name, family) in enumerate(FAMILIES.items()):
        linked_bundle(demo_bundle, models / name, name=name, source_sha256=str(i + 1) * 64, architecture=family)
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=models, options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client, state
    state.close()


def test_sd_models_lists_every_family_with_a1111_fields(server):
    client, _ = server
    r = client.get("/sdapi/v1/sd-models")
    assert r.status_code == 200
    listed = {m["model_name"]: m for m in r.json()}
    assert set(FAMILIES) <= set(listed)
    for i, name in enumerate(FAMILIES):
        item = listed[name]
        assert set(item) == {"title", "model_name", "hash", "sha256", "filename", "config"}
        assert item["sha256"] == str(i + 1) * 64 and item["hash"] == str(i + 1) * 10
        assert item["title"] == f"{name} [{item['hash']}]" and item["config"] is None


@pytest.mark.parametrize("name,status", [("tiny-sd2", 200), ("tiny-xl", 422), ("tiny-xl-refiner", 422)])
@pytest.mark.slow
def test_hires_checkpoint_across_families(server, name, status):
    client, _ = server
    r = client.post("/sdapi/v1/txt2img", json={**FIRST, "enable_hr": True, "denoising_strength": 0.5,
                                               "hr_scale": 1.5, "hr_checkpoint_name": name})
    assert r.status_code == status, r.text
    if status == 422:
        body = r.json()
        assert set(body) == {"error", "detail", "body", "errors"}
        assert "cannot continue the first pass" in body["detail"] and "sdxl" in body["detail"]

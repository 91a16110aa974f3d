"""The `NGMS` infotext entry as A1111 v1.10.1 writes it (modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward
adds `NGMS: <s_min_uncond>`, and `NGMS all steps: True` with option s_min_uncond_all, when a step skipped the
uncond: an odd step, or any with s_min_uncond_all, whose σ is below s_min_uncond), and pasted back."""

import json

from service.a1111.infotext import parse_infotext

BODY = {"prompt": "a cat", "seed": 7, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler"}


def entries(api, body):
    r = api.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    return parse_infotext(info["infotexts"][0]), r.json()["images"][0]


def test_written_when_a_step_skipped_the_uncond(api):
    # The demo model's σ stay below 100, so step 1 (odd) skips the uncond.
    params, image = entries(api, {**BODY, "s_min_uncond": 100.0})
    assert params["NGMS"] == "100.0" and "NGMS all steps" not in params
    params, _ = entries(api, {**BODY, "s_min_uncond": 100.0, "override_settings": {"s_min_uncond_all": True}})
    assert params["NGMS"] == "100.0" and params["NGMS all steps"] == "True"
    # The option is the default when the request sends none.
    params, same = entries(api, {**BODY, "override_settings": {"s_min_uncond": 100.0}})
    assert params["NGMS"] == "100.0" and same == image


def test_not_written_when_no_step_skipped(api):
    params, plain = entries(api, BODY)
    assert "NGMS" not in params
    params, image = entries(api, {**BODY, "s_min_uncond": 1e-6})  # below every σ the denoiser sees
    assert "NGMS" not in params and image == plain
    # One step: only step 0, which is even, so nothing is skipped without s_min_uncond_all.
    params, _ = entries(api, {**BODY, "steps": 1, "s_min_uncond": 100.0})
    assert "NGMS" not in params
    params, _ = entries(api, {**BODY, "steps": 1, "s_min_uncond": 100.0,
                              "override_settings": {"s_min_uncond_all": True}})
    assert params["NGMS"] == "100.0" and params["NGMS all steps"] == "True"


def test_pasted_back_as_the_options(api):
    params, _ = entries(api, {**BODY, "s_min_uncond": 100.0, "override_settings": {"s_min_uncond_all": True}})
    r = api.post("/sdapi/v1/txt2img", json={
        "infotext": "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7.0, Seed: 7, Size: 64x64, NGMS: 100.0, "
                    "NGMS all steps: True", "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    pasted = parse_infotext(json.loads(r.json()["info"])["infotexts"][0])
    assert pasted["NGMS"] == "100.0" and pasted["NGMS all steps"] == "True"
    assert r.json()["parameters"]["override_settings"] == {"s_min_uncond": 100.0, "s_min_uncond_all": True}

"""Sampler/scheduler names as A1111's API resolves them (A1111 modules/sd_samplers.py:
get_sampler_and_scheduler) and the /samplers, /schedulers lists."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine.samplers import SAMPLERS, SamplerSettings
from engine.schedules import ScheduleOptions
from service.a1111.sampler_names import get_sampler_and_scheduler, resolve_sampler, sampler_settings
from service.http.routes.samplers import router


@pytest.mark.parametrize(
    "name,scheduler,expected",
    [
        # Legacy combined names are split; the suffix may be a label, a name or an alias (A1111
        # modules/sd_samplers.py: get_sampler_and_scheduler).
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "automatic")),  # Karras is DPM++ 2M's own default
        ("Euler a SGMUniform", None, ("Euler a", "sgm_uniform")),
        ("Euler a Karras", None, ("Euler a", "karras")),
        ("Euler a karras", None, ("Euler a", "karras")),
        ("DPM++ 2M SDE Heun Exponential", None, ("DPM++ 2M SDE Heun", "automatic")),
        ("DPM++ SDE Align Your Steps", None, ("DPM++ SDE", "align_your_steps")),
        # The request's scheduler (name or label) wins over a suffix; aliases are not accepted there.
        ("DPM++ 2M Karras", "exponential", ("DPM++ 2M", "exponential")),
        ("Euler", "Karras", ("Euler", "karras")),
        ("Euler", "SGMUniform", ("Euler", "automatic")),
        ("Euler", "no such scheduler", ("Euler", "automatic")),
        ("Euler a Karras", "", ("Euler a", "karras")),  # an empty scheduler is no scheduler
        # Unknown names, sampler aliases and other casings fall back to the first sampler, never an error.
        ("k_euler_a", None, ("DPM++ 2M", "automatic")),
        ("euler a", None, ("DPM++ 2M", "automatic")),
        ("Euler Ancestral", None, ("DPM++ 2M", "automatic")),
        (None, None, ("DPM++ 2M", "automatic")),
        ("", "", ("DPM++ 2M", "automatic")),
        ("DDIM", "karras", ("DDIM", "karras")),  # timestep samplers keep the label (for the infotext)
    ],
)
def test_resolve_sampler(name, scheduler, expected):
    assert resolve_sampler(name, scheduler) == expected


def test_get_sampler_and_scheduler_reports_labels_and_converts_the_default():
    assert get_sampler_and_scheduler("DPM++ 2M Karras", None) == ("DPM++ 2M", "Automatic")
    assert get_sampler_and_scheduler("DPM++ 2M Karras", None, convert_automatic=False) == ("DPM++ 2M", "Karras")
    assert get_sampler_and_scheduler("Euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert get_sampler_and_scheduler(None, None) == ("DPM++ 2M", "Automatic")


SAMPLER_TABLE = [  # A1111 modules/sd_samplers_kdiffusion.py: samplers_k_diffusion, in /samplers order
    ("DPM++ 2M", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("DPM++ SDE", ["k_dpmpp_sde"], {"scheduler": "karras", "second_order": "True", "brownian_noise": "True"}),
    ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], {"scheduler": "exponential", "brownian_noise": "True"}),
    ("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"],
     {"scheduler": "exponential", "brownian_noise": "True", "solver_type": "heun"}),
    ("DPM++ 2S a", ["k_dpmpp_2s_a"], {"scheduler": "karras", "uses_ensd": "True", "second_order": "True"}),
    ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"],
     {"scheduler": "exponential", "discard_next_to_last_sigma": "True", "brownian_noise": "True"}),
    ("Euler a", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": "True"}),
    ("Euler", ["k_euler"], {}),
    ("LMS", ["k_lms"], {}),
    ("Heun", ["k_heun"], {"second_order": "True"}),
    ("DPM2", ["k_dpm_2"], {"scheduler": "karras", "discard_next_to_last_sigma": "True", "second_order": "True"}),
    ("DPM2 a", ["k_dpm_2_a"], {"scheduler": "karras", "discard_next_to_last_sigma": "True", "uses_ensd": "True",
                               "second_order": "True"}),
    ("DPM fast", ["k_dpm_fast"], {"uses_ensd": "True"}),
    ("DPM adaptive", ["k_dpm_ad"], {"uses_ensd": "True"}),
    ("Restart", ["restart"], {"scheduler": "karras", "second_order": "True"}),
    ("DDIM", ["ddim"], {}),
    ("DDIM CFG++", ["ddim_cfgpp"], {}),
    ("PLMS", ["plms"], {}),
    ("UniPC", ["unipc"], {}),
    ("LCM", ["k_lcm"], {}),
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_samplers_endpoint(client):
    response = client.get("/sdapi/v1/samplers")
    assert response.status_code == 200
    body = response.json()
    assert [(item["name"], item["aliases"], item["options"]) for item in body] == SAMPLER_TABLE
    # Option order too: clients that print the dict see A1111's.
    assert [list(item["options"]) for item in body] == [list(r[2]) for r in SAMPLER_TABLE]


def test_schedulers_endpoint(client):
    body = client.get("/sdapi/v1/schedulers").json()
    assert [item["name"] for item in body] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
        "align_your_steps", "simple", "normal", "ddim", "beta",
    ]
    assert body[2] == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                       "need_inner_model": False}
    assert body[5] == {"name": "sgm_uniform", "label": "SGM Uniform", "aliases": ["SGMUniform"],
                       "default_rho": -1.0, "need_inner_model": True}
    assert all(set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for item in body)


def test_every_listed_name_resolves_to_itself(client):
    for item in client.get("/sdapi/v1/samplers").json():
        assert resolve_sampler(item["name"], None)[0] == item["name"]
    for item in client.get("/sdapi/v1/schedulers").json():
        assert resolve_sampler("Euler", item["label"]) == ("Euler", item["name"])


def test_second_order_and_extra_params_follow_a1111():
    """Heun/DPM2/… double the prompt-schedule length; churn goes to Euler/Heun/DPM2 only, s_noise to the
    ancestral/SDE samplers and DPM fast (A1111's `sampler_extra_params`), never to Euler a."""
    assert SAMPLERS["Heun"].total_steps(20) == 40 and SAMPLERS["Euler"].total_steps(20) == 20
    churn = {n for n, s in SAMPLERS.items() if "s_churn" in s.extra_params}
    noise = {n for n, s in SAMPLERS.items() if "s_noise" in s.extra_params}
    assert churn == {"Euler", "Heun", "DPM2"}
    assert noise == churn | {"DPM fast", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
                             "DPM++ 3M SDE"}


def test_sampler_settings_from_options():
    assert sampler_settings({}) == SamplerSettings()
    settings = sampler_settings(
        {"eta_ancestral": 0.5, "eta_ddim": 0.25, "s_min_uncond": 2.0, "s_min_uncond_all": True,
         "always_discard_next_to_last_sigma": True, "uni_pc_variant": "bh2", "uni_pc_order": 2,
         "uni_pc_skip_type": "logSNR", "uni_pc_lower_order_final": False, "sigma_min": 0.1, "sigma_max": 10,
         "rho": 5, "beta_dist_alpha": 0.7, "beta_dist_beta": 0.8, "use_old_karras_scheduler_sigmas": True},
    )
    assert settings == SamplerSettings(
        eta_ancestral=0.5, eta_ddim=0.25, s_min_uncond=2.0, s_min_uncond_all=True,
        always_discard_next_to_last_sigma=True, uni_pc_variant="bh2", uni_pc_skip_type="logSNR", uni_pc_order=2,
        uni_pc_lower_order_final=False,
        schedule=ScheduleOptions(sigma_min=0.1, sigma_max=10.0, rho=5.0, beta_alpha=0.7, beta_beta=0.8,
                                 old_karras_sigmas=True),
    )
    # The request's s_min_uncond wins over the option.
    assert sampler_settings({"s_min_uncond": 2.0}, s_min_uncond=0.5).s_min_uncond == 0.5

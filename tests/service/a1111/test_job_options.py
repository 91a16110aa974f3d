"""JobOptions: the typed, frozen options of one job (service/a1111/job_options.py)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from engine.samplers import SamplerSettings
from engine.schedules import ScheduleOptions
from service.a1111.job_options import OPTION_KEYS, JobOptions
from service.a1111.sdapi_models import Txt2ImgRequest
from service.runtime.options import ALL_DEFAULTS, DEFAULTS, IMPLEMENTED

ROOT = Path(__file__).resolve().parents[3]
HINTS = typing.get_type_hints(JobOptions)


def test_every_field_is_an_implemented_option_with_its_default():
    for name in OPTION_KEYS:
        assert name in IMPLEMENTED, name
        default = JobOptions.__dataclass_fields__[name].default
        expected = DEFAULTS[name]
        assert default == (tuple(expected) if isinstance(expected, list) else expected), name
        if expected is not None:  # the annotation is the default's type, as A1111 types its options model
            hint = HINTS[name]
            origin = typing.get_origin(hint) or hint
            assert type(default) is origin, (name, hint)


def test_built_from_all_defaults_or_from_nothing_is_the_default_object():
    assert JobOptions.from_mapping(ALL_DEFAULTS) == JobOptions()
    assert JobOptions.from_mapping({}) == JobOptions()
    assert JobOptions.of(None) == JobOptions()


def test_frozen():
    options = JobOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.s_churn = 1.0  # type: ignore[misc]


def test_coercion_to_the_defaults_type_as_a1111_casts_options():
    # A1111 `Options.cast_value`: type(default)(value); for a bool only the text "False" is false.
    options = JobOptions.from_mapping({
        "s_churn": "0.5", "eta_ddim": 1, "CLIP_stop_at_last_layers": 2.0, "uni_pc_order": "2",
        "jpeg_quality": "95", "webp_lossless": "True", "enable_pnginfo": "False", "overlay_inpaint": 0,
        "return_mask": 1, "samples_format": "webp", "infotext_skip_pasting": ["Seed", "Steps"],
        "eta_noise_seed_delta": None,
    })
    assert options.s_churn == 0.5 and type(options.s_churn) is float
    assert options.eta_ddim == 1.0 and type(options.eta_ddim) is float
    assert options.CLIP_stop_at_last_layers == 2 and type(options.CLIP_stop_at_last_layers) is int
    assert options.uni_pc_order == 2 and type(options.uni_pc_order) is int
    assert options.jpeg_quality == 95
    assert options.webp_lossless is True
    assert options.enable_pnginfo is False
    assert options.overlay_inpaint is False
    assert options.return_mask is True
    assert options.samples_format == "webp"
    assert options.infotext_skip_pasting == ("Seed", "Steps")
    assert options.eta_noise_seed_delta == 0  # null: the default


def test_a_value_that_cannot_take_the_option_type_is_refused():
    with pytest.raises(ValueError):
        JobOptions.from_mapping({"jpeg_quality": "high"})


def test_sampler_settings_from_the_options():
    assert JobOptions().sampler_settings() == SamplerSettings()  # the engine's own defaults are A1111's
    options = JobOptions.from_mapping({
        "eta_ancestral": 0.5, "s_min_uncond": 2.0, "rho": 7, "sigma_max": 10.0, "beta_dist_alpha": 0.3,
        "use_old_karras_scheduler_sigmas": True, "uni_pc_order": 2, "sd_noise_schedule": "Zero Terminal SNR",
        "sgm_noise_multiplier": True,
    })
    settings = options.sampler_settings()
    assert settings.eta_ancestral == 0.5 and settings.s_min_uncond == 2.0 and settings.uni_pc_order == 2
    assert settings.schedule == ScheduleOptions(rho=7.0, sigma_max=10.0, beta_alpha=0.3, old_karras_sigmas=True)
    assert settings.noise_schedule == "Zero Terminal SNR" and settings.sgm_noise_multiplier is True
    assert options.sampler_settings(s_min_uncond=0.25).s_min_uncond == 0.25  # the request's value wins


def test_image_limits_from_the_api_options():
    limits = JobOptions.from_mapping({"api_enable_requests": True, "api_forbid_local_requests": False,
                                      "api_useragent": "sdedge-test"}).image_limits()
    assert (limits.allow_urls, limits.forbid_local_urls, limits.user_agent) == (True, False, "sdedge-test")


def test_unimplemented_options_in_effect_are_named_once():
    key = next(k for k, v in ALL_DEFAULTS.items() if k not in IMPLEMENTED and isinstance(v, bool))
    options = JobOptions.from_mapping({**ALL_DEFAULTS, key: not ALL_DEFAULTS[key]})
    assert len(options.unimplemented) == 1 and key in options.unimplemented[0]
    assert JobOptions.from_mapping(ALL_DEFAULTS).unimplemented == ()


@pytest.fixture()
def state(tmp_path):
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(models_dir=tmp_path / "models", options_file=tmp_path / "o.json"))
    yield state
    state.close()


def test_override_settings_reach_the_jobs_object_and_leave_the_server_options(state):
    state.options.update({"eta_noise_seed_delta": 7})
    options = state.job_options({"CLIP_stop_at_last_layers": 2, "s_churn": 0.5, "randn_source": "CPU"})
    assert isinstance(options, JobOptions)
    assert (options.CLIP_stop_at_last_layers, options.s_churn, options.randn_source) == (2, 0.5, "CPU")
    assert options.eta_noise_seed_delta == 7  # the server's value where the request does not override it
    assert state.options.get("s_churn") == 0.0 and state.options.get("randn_source") == "GPU"
    assert state.job_options(None) == JobOptions.from_mapping(state.options.snapshot())


def test_the_plan_takes_the_jobs_options(state):
    from service.a1111.translate import plan_txt2img

    options = state.job_options({"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "s_churn": 0.5,
                                 "emphasis": "No norm", "add_model_hash_to_info": False})
    plan = plan_txt2img(Txt2ImgRequest(prompt="a cat", width=64, height=64, steps=2, s_churn=0.25), options)
    assert (plan.clip_skip, plan.eta_noise_seed_delta, plan.emphasis) == (2, 31337, "No norm")
    assert plan.s_churn == 0.5  # A1111 quirk: an option away from its neutral value wins over the request's
    assert plan.report.model_hash is False
    # A dict (a caller outside the job path) gives the same plan as the object built from it.
    as_dict = {**state.options.snapshot(), "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337,
               "s_churn": 0.5, "emphasis": "No norm", "add_model_hash_to_info": False}
    again = plan_txt2img(Txt2ImgRequest(prompt="a cat", width=64, height=64, steps=2, s_churn=0.25, seed=plan.seeds[0],
                                        subseed=plan.subseeds[0]), as_dict)
    assert again == plan


@pytest.mark.parametrize("module", ["service/a1111/translate.py", "service/a1111/results.py", "service/a1111/infotext.py",
                                    "service/runtime/generate.py"])
def test_the_job_path_does_not_index_the_options_mapping(module):
    source = (ROOT / module).read_text(encoding="utf-8")
    found = re.findall(r"\boptions\.get\(|\boptions\[|\bopts\.get\(", source)
    assert not found, f"{module} reads the options dict ({found}); read JobOptions attributes"

"""Infotext round trips: a request is planned (service.a1111.translate), its infotext written from the plan, pasted back
through the `infotext` request field (A1111 modules/api/api.py: `Api.apply_infotext`) and planned again; the
values the infotext carries must come back the same. Where A1111 itself does not round-trip (`Seed resize from`
pasted swapped, `Beta schedule alpha` written under another label than the option reads) the test pins A1111's
behaviour instead. The REST tests pin the legacy first-pass hires request (A1111
`StableDiffusionProcessingTxt2Img.__post_init__` and `calculate_target_resolution`): the image is as large as
the infotext's Size × Hires upscale (or Hires resize) says."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from engine.samplers import SAMPLERS, TIMESTEPS
from service.a1111.infotext import create_infotext, generation_parameters, parse_infotext
from service.a1111.infotext_fields import FIELDS, OPTION_LABELS, paste_fields, schedule_label
from service.a1111.infotext_request import apply_infotext
from service.a1111.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from service.a1111.styles import StyleDatabase
from service.a1111.translate import plan_img2img, plan_txt2img
from service.runtime.options import DEFAULTS

BASE = {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 7, "steps": 3, "width": 64, "height": 64}
HIRES = {"enable_hr": True, "denoising_strength": 0.45}
OTHER_CHECKPOINT = "other [0123456789]"

# (request fields, option overrides) — between them every label a plan can write with a paste mapping.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {}),
    "karras, variation seed, clip skip, RNG": (
        {"sampler_name": "DPM++ 2M", "cfg_scale": 6.5, "subseed": 11, "subseed_strength": 0.3,
         "seed_resize_from_w": 48, "seed_resize_from_h": 48},
        {"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"}),
    "ancestral eta, ENSD, schedule options, prompt language": (
        {"prompt": "(a red:1.2) [circle]", "sampler_name": "Euler a", "eta": 0.5},
        {"eta_noise_seed_delta": 31337, "sigma_min": 0.05, "sigma_max": 10.0, "rho": 5.0, "skip_early_cond": 0.2,
         "sgm_noise_multiplier": True, "emphasis": "No norm", "use_old_scheduling": True,
         "always_discard_next_to_last_sigma": True}),
    "churn": ({"sampler_name": "Euler", "s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 0.9}, {}),
    "tiling": ({}, {"tiling": True}),
    "face restoration": ({}, {"face_restoration": True}),  # the model has no label: A1111 pastes only the flag
    "DDIM eta, zero terminal SNR": ({"sampler_name": "DDIM", "eta": 0.3}, {"sd_noise_schedule": "Zero Terminal SNR"}),
    "hires upscale": (
        {**HIRES, "hr_scale": 1.5, "hr_second_pass_steps": 2, "hr_upscaler": "Latent (nearest)",
         "hr_prompt": "a blue square", "hr_negative_prompt": "grainy", "hr_sampler_name": "Euler a",
         "hr_scheduler": "Exponential"},
        {"img2img_extra_noise": 0.1}),
    "hires resize": ({**HIRES, "hr_resize_x": 96, "hr_resize_y": 80}, {}),
    "hires resize one side": ({**HIRES, "hr_resize_x": 96, "hr_upscaler": "Lanczos"}, {}),
    "hires on another checkpoint": ({**HIRES, "hr_checkpoint_name": OTHER_CHECKPOINT}, {}),
    "legacy first pass": ({**HIRES, "width": 96, "height": 96, "firstphase_width": 64, "firstphase_height": 64}, {}),
    "legacy first pass with resize": (
        {**HIRES, "width": 96, "height": 96, "firstphase_width": 64, "firstphase_height": 64, "hr_resize_x": 128,
         "hr_resize_y": 96}, {}),
    "legacy first pass without hires": ({"width": 96, "height": 96, "firstphase_width": 64, "firstphase_height": 48},
                                        {}),
    "styles": ({"styles": ["cinematic"], "hr_prompt": "a blue square", **HIRES}, {}),
}


@pytest.fixture(scope="module")
def styles(tmp_path_factory) -> StyleDatabase:
    path = tmp_path_factory.mktemp("styles") / "styles.csv"
    path.write_text('name,prompt,negative_prompt\ncinematic,"{prompt}, cinematic lighting","lowres"\n',
                    encoding="utf-8")
    return StyleDatabase([path])


def txt2img_plan(req: Txt2ImgRequest, options: dict, styles: StyleDatabase):
    # generate.py resolves hr_checkpoint_name to a registry entry; only its title reaches the plan.
    other = req.hr_checkpoint_name if req.enable_hr and req.hr_checkpoint_name not in (None, "",
                                                                                       "Use same checkpoint") else None
    return plan_txt2img(req, options, styles=styles,
                        hires_model=SimpleNamespace(title=other) if other else None)


def infotext_of(plan, index: int = 0) -> str:
    params = generation_parameters(plan, index, "sdedge-tiny", "0123456789")
    return create_infotext(plan.prompts[index], plan.negative_prompts[index], params)


def pasted_options(req) -> dict:
    return dict(DEFAULTS, **(req.override_settings or {}))


def reported(plan) -> dict[str, Any]:
    """The plan values an infotext carries: what ran, not how the request spelled it."""
    s = plan.sampler_settings
    sampler = SAMPLERS[plan.sampler]
    values = {
        "prompt": plan.prompts[0], "negative_prompt": plan.negative_prompts[0], "seed": plan.seeds[0],
        "subseed": plan.subseeds[0] if plan.subseed_strength else None, "subseed_strength": plan.subseed_strength,
        "seed_resize_from": (plan.seed_resize_from_w, plan.seed_resize_from_h), "size": (plan.width, plan.height),
        "steps": plan.steps, "cfg_scale": plan.cfg_scale, "sampler": plan.sampler,
        "schedule": schedule_label(sampler.default_scheduler, plan.scheduler), "clip_skip": plan.clip_skip,
        "eta": plan.eta if plan.eta is not None else (s.eta_ddim if sampler.kind == TIMESTEPS else s.eta_ancestral),
        "churn": (plan.s_churn, plan.s_tmin, plan.s_tmax, plan.s_noise), "rng": plan.randn_source,
        "ensd": plan.eta_noise_seed_delta, "emphasis": plan.emphasis, "old_scheduling": plan.use_old_scheduling,
        "schedule_options": (s.schedule.sigma_min, s.schedule.sigma_max, s.schedule.rho),
        "sampler_options": (s.skip_early_cond, s.sgm_noise_multiplier, s.noise_schedule,
                            s.always_discard_next_to_last_sigma, s.img2img_extra_noise),
        "denoising_strength": plan.report.denoising_strength if plan.hires or plan.img2img else None,
        "hires": None,
    }
    hr = plan.hires
    if hr is not None:
        values["hires"] = {
            "size": (hr.width, hr.height, hr.truncate_x, hr.truncate_y), "upscaler": hr.upscaler,
            "upscaler_label": hr.upscaler_label, "sampler": hr.sampler,
            "schedule": schedule_label(SAMPLERS[hr.sampler].default_scheduler, hr.scheduler), "steps": hr.steps,
            "requested_steps": hr.requested_steps, "denoising_strength": hr.denoising_strength,
            "prompt": hr.prompts[0], "negative_prompt": hr.negative_prompts[0],
            "resize": (hr.resize_x, hr.resize_y), "scale": None if hr.resize_x or hr.resize_y else hr.scale,
            "checkpoint": hr.checkpoint,
        }
    return values


@pytest.mark.parametrize("name", list(CASES))
def test_txt2img_infotext_round_trip(name, styles):
    fields, overrides = CASES[name]
    options = dict(DEFAULTS, **overrides)
    plan = txt2img_plan(Txt2ImgRequest(**{**BASE, **fields}), options, styles)
    text = infotext_of(plan)
    req = apply_infotext(Txt2ImgRequest(infotext=text), DEFAULTS, styles.extract_styles)
    again = txt2img_plan(req, pasted_options(req), styles)
    assert reported(again) == reported(plan), text
    assert infotext_of(again) == text


def test_cases_cover_every_pasted_label(styles):
    """Every label the plan writes and a paste reads back appears in some case's infotext."""
    seen: set[str] = set()
    for fields, overrides in CASES.values():
        plan = txt2img_plan(Txt2ImgRequest(**{**BASE, **fields}), dict(DEFAULTS, **overrides), styles)
        params = generation_parameters(plan, 0, "m", "h")
        seen |= {label for label, value in params.items() if value is not None}
    pasted = {p.key.removesuffix("-1").removesuffix("-2") for p in paste_fields(txt2img=True)}
    pasted |= {label for _, label in OPTION_LABELS}
    written = {f.label for f in FIELDS if f.write is not None}
    # Pasted only as a checkpoint switch (option disable_weights_auto_swap); an inpainting model's result; img2img.
    # `VAE`: a separate VAE file in use, resolved by the runtime (tests/server/test_vae_choice.py pastes it).
    # NGMS: written from what the sampling did (tests/service/a1111/test_ngms_infotext.py).
    elsewhere = {"Model hash", "Conditional mask weight", "Noise multiplier", "VAE", "NGMS", "NGMS all steps"}
    # Written once the refiner took over (the result says so): tests/service/a1111/test_refiner.py.
    elsewhere |= {"Refiner switch at", "Hires refiner", "Refiner switch by sampling steps"}
    assert (written & pasted) - elsewhere <= seen, (written & pasted) - elsewhere - seen


def test_legacy_first_pass_plan_matches_a1111():
    """firstphase_* are the first pass; A1111's calculate_target_resolution recomputes the hires target from
    hr_scale (or hr_resize_x/y), dropping width×height — with or without enable_hr for the first pass."""
    legacy = {**BASE, "width": 96, "height": 96, "firstphase_width": 64, "firstphase_height": 64}
    plan = plan_txt2img(Txt2ImgRequest(**legacy, **HIRES), DEFAULTS)
    assert (plan.width, plan.height, plan.hires.width, plan.hires.height) == (64, 64, 128, 128)
    assert "Size: 64x64" in infotext_of(plan) and "Hires upscale: 2.0" in infotext_of(plan)
    plan = plan_txt2img(Txt2ImgRequest(**legacy, **HIRES, hr_resize_x=96, hr_resize_y=80), DEFAULTS)
    assert (plan.hires.width, plan.hires.height, plan.hires.truncate_y) == (96, 96, 2)  # cover 96x80, crop
    assert "Hires resize: 96x80" in infotext_of(plan)
    plan = plan_txt2img(Txt2ImgRequest(**legacy), DEFAULTS)
    assert (plan.width, plan.height, plan.hires) == (64, 64, None)


@pytest.mark.parametrize("fields", [{"firstphase_width": 64}, {"firstphase_height": 60}])
def test_a_half_or_odd_legacy_size_is_the_clients_mistake(fields):
    from service.a1111.errors import InvalidRequest
    from service.http.errors import http_status

    with pytest.raises(InvalidRequest) as exc:
        plan_txt2img(Txt2ImgRequest(**BASE, **HIRES, **fields), DEFAULTS)
    assert http_status(exc.value) == 422 and exc.value.field.startswith("firstphase_")


def test_seed_resize_from_is_pasted_swapped():
    """A1111 quirk (modules/processing_scripts/seed.py paste fields): `Seed resize from: WxH` fills
    seed_resize_from_h with W and seed_resize_from_w with H."""
    plan = plan_txt2img(Txt2ImgRequest(**BASE, seed_resize_from_w=64, seed_resize_from_h=32), DEFAULTS)
    text = infotext_of(plan)
    assert "Seed resize from: 64x32" in text
    again = plan_txt2img(apply_infotext(Txt2ImgRequest(infotext=text), DEFAULTS), DEFAULTS)
    assert (again.seed_resize_from_w, again.seed_resize_from_h) == (32, 64)


def test_beta_schedule_settings_are_not_pasted():
    """A1111 writes `Beta schedule alpha` while its option reads `Beta scheduler alpha`: a paste ignores it."""
    options = dict(DEFAULTS, beta_dist_alpha=0.5, beta_dist_beta=0.7)
    plan = plan_txt2img(Txt2ImgRequest(**BASE, scheduler="beta"), options)
    text = infotext_of(plan)
    assert "Beta schedule alpha: 0.5, Beta schedule beta: 0.7" in text
    req = apply_infotext(Txt2ImgRequest(infotext=text), DEFAULTS)
    assert "beta_dist_alpha" not in req.override_settings and "beta_dist_beta" not in req.override_settings


def png_b64(size=(64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_img2img_infotext_round_trip():
    """img2img's own tab fields have no API name in A1111, so a paste fills the scripts' fields (steps, sampler,
    scheduler, seeds) and the labelled options only."""
    fields = {"init_images": [png_b64()], "prompt": "a red circle", "steps": 4, "seed": 9, "subseed": 3,
              "subseed_strength": 0.2, "sampler_name": "Euler a", "scheduler": "karras", "denoising_strength": 0.6,
              "initial_noise_multiplier": 0.9, "eta": 0.7}
    options = dict(DEFAULTS, CLIP_stop_at_last_layers=3, eta_noise_seed_delta=5)
    plan = plan_img2img(Img2ImgRequest(**fields), options)
    text = infotext_of(plan)
    req = apply_infotext(Img2ImgRequest(init_images=fields["init_images"], prompt="a red circle",
                                        denoising_strength=0.6, infotext=text), DEFAULTS)
    again = plan_img2img(req, pasted_options(req))
    keys = ("seed", "subseed", "subseed_strength", "steps", "sampler", "schedule", "clip_skip", "eta", "ensd",
            "denoising_strength")
    assert {k: reported(again)[k] for k in keys} == {k: reported(plan)[k] for k in keys}
    assert again.img2img.initial_noise_multiplier == plan.img2img.initial_noise_multiplier == 0.9
    assert infotext_of(again) == text


# ---- the REST endpoint: the image is what the infotext says ----------------------------------------------


def expected_size(params: dict[str, Any]) -> tuple[int, int]:
    """The final size A1111 derives from a parsed infotext (A1111 modules/processing.py:
    StableDiffusionProcessingTxt2Img.sample_hr_pass), for the cases below."""
    width, height = int(params["Size-1"]), int(params["Size-2"])
    resize_x, resize_y = int(params["Hires resize-1"]), int(params["Hires resize-2"])
    if "Hires upscale" in params:
        scale = float(params["Hires upscale"])
        return int(width * scale), int(height * scale)
    if resize_x and resize_y:
        return resize_x, resize_y  # covered, then cropped to the box
    return width, height


@pytest.mark.parametrize("fields", [
    {**HIRES},
    {**HIRES, "hr_scale": 1.5},
    {**HIRES, "hr_resize_x": 96, "hr_resize_y": 80},
    {},
], ids=["hires", "hires scale", "hires resize", "no hires"])
@pytest.mark.slow
def test_legacy_request_image_is_the_infotexts_size(api, fields):
    body = {"prompt": "a red circle", "steps": 2, "seed": 3, "width": 96, "height": 96, "firstphase_width": 64,
            "firstphase_height": 64, **fields}
    r = api.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    info = json.loads(r.json()["info"])
    params = parse_infotext(info["infotexts"][0])
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")
    assert image.size == expected_size(params)
    assert (info["width"], info["height"]) == (64, 64)
    assert info["denoising_strength"] == (0.45 if fields else None)
    extras = info["extra_generation_params"]
    if fields.get("hr_resize_x"):
        assert extras["Hires resize"] == "96x80" and "Hires upscale" not in extras
    elif fields:
        assert extras["Hires upscale"] == fields.get("hr_scale", 2.0) and "Hires resize" not in extras


def test_parsed_labels_are_in_the_table():
    """The labels the parser itself adds or reads (defaults, legacy first pass, back-compat) are the table's."""
    from service.a1111.infotext_fields import BY_LABEL

    texts = ["", "x\nSteps: 3, Seed: 1, First pass size: 64x64, Hypernet: h, Version: v1.5.0, Sampler: DDIM, "
                 "Refiner: r, FP8 weight: Enable for SDXL",
             "[a:b:2]\nSteps: 3, Seed: 1, Size: 64x64, Version: v1.5.0"]
    keys = {key for text in texts for key in parse_infotext(text)}
    labels = {key.removesuffix("-1").removesuffix("-2") for key in keys}
    assert labels - set(BY_LABEL) == set()
    assert len(BY_LABEL) == len(FIELDS)  # one row per label

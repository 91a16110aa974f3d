"""The `infotext` request field (A1111 modules/api/api.py: Api.apply_infotext): a pasted infotext fills the
fields the client left out and
overrides the settings it names, over REST and gRPC. Expected values are read off infotexts as A1111
modules/processing.py: create_infotext writes them and Api.apply_infotext's mapping; the round trips compare
two generations, not a stored result."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.a1111.errors import InvalidRequest
from service.a1111.infotext_request import OPTION_LABELS, apply_infotext
from service.a1111.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from service.http.errors import http_status
from service.runtime.options import DEFAULTS
from tests.images import b64, noise_image
from tests.infotext_examples import EXAMPLE_2

# A small infotext in A1111's format, for the generating tests.
SMALL = (
    "a red circle\n"
    "Negative prompt: blurry\n"
    "Steps: 3, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, Size: 64x48, "
    "Clip skip: 2, ENSD: 31337, Version: v1.10.1"
)


def options(**changes) -> dict:
    return {**DEFAULTS, **changes}


# -- the mapping, without generating --------------------------------------------------------------------------------


def test_txt2img_takes_its_fields_the_scripts_fields_and_the_settings():
    req = apply_infotext(Txt2ImgRequest(infotext=EXAMPLE_2), options())
    assert (req.prompt, req.negative_prompt) == ("1girl, <lora:add_detail:0.8>", "easynegative")
    assert (req.steps, req.sampler_name, req.cfg_scale, req.seed) == (25, "DPM++ 2M", 6.5, 1000)
    # Karras is DPM++ 2M's own scheduler, so A1111's get_scheduler_from_infotext reports Automatic.
    assert req.scheduler == "Automatic"
    assert (req.width, req.height) == (512, 768)
    assert (req.subseed, req.subseed_strength) == (2000, 0.3)
    assert (req.enable_hr, req.denoising_strength, req.hr_scale) == (True, 0.45, 2.0)
    assert (req.hr_second_pass_steps, req.hr_upscaler, req.hr_resize_x, req.hr_resize_y) == (10, "R-ESRGAN 4x+", 0, 0)
    # The parser's defaults are pasted too (a quirk of A1111 modules/api/api.py: Api.apply_infotext: "Use same
    # sampler").
    assert (req.hr_sampler_name, req.hr_scheduler, req.hr_checkpoint_name) == (
        "Use same sampler", "Use same scheduler", "Use same checkpoint")
    assert (req.hr_prompt, req.hr_negative_prompt) == ("", "")
    assert isinstance(req.steps, int) and isinstance(req.cfg_scale, float) and isinstance(req.width, int)
    # Clip skip and VAE differ from the options; Model hash is skipped (disable_weights_auto_swap).
    assert req.override_settings == {"CLIP_stop_at_last_layers": 2,
                                     "sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}
    # Unmapped fields keep their defaults.
    assert (req.batch_size, req.n_iter, req.sampler_index, req.styles) == (1, 1, "Euler", None)


def test_img2img_takes_only_the_scripts_fields():
    req = apply_infotext(Img2ImgRequest(infotext=EXAMPLE_2), options())
    assert (req.steps, req.sampler_name, req.scheduler, req.seed) == (25, "DPM++ 2M", "Automatic", 1000)
    assert (req.subseed, req.subseed_strength) == (2000, 0.3)
    assert (req.prompt, req.negative_prompt, req.cfg_scale, req.width, req.height) == ("", "", 7.0, 512, 512)
    assert req.denoising_strength == 0.75
    assert req.override_settings["CLIP_stop_at_last_layers"] == 2


def test_sent_fields_and_settings_win_even_when_null():
    body = {"infotext": EXAMPLE_2, "steps": 7, "seed": None, "override_settings": {"CLIP_stop_at_last_layers": 3}}
    req = apply_infotext(Txt2ImgRequest.model_validate(body), options())
    assert (req.steps, req.seed, req.cfg_scale) == (7, None, 6.5)
    assert req.override_settings == {"CLIP_stop_at_last_layers": 3,
                                     "sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}


def test_seed_resize_is_pasted_swapped():
    text = "x\nSteps: 3, Seed: 5, Size: 64x64, Seed resize from: 128x64"
    req = apply_infotext(Txt2ImgRequest(infotext=text), options())
    assert (req.seed_resize_from_h, req.seed_resize_from_w) == (128, 64)


def test_settings_compare_with_the_current_options():
    # No `Clip skip` in the text: the parser's default "1" differs from the server's 2, so it is overridden.
    req = apply_infotext(Txt2ImgRequest(infotext="x\nSteps: 3, Seed: 5, Size: 64x64"),
                         options(CLIP_stop_at_last_layers=2))
    assert req.override_settings == {"CLIP_stop_at_last_layers": 1}
    # Equal values are left out; an infotext always leaves a dict, never null.
    req = apply_infotext(Txt2ImgRequest(infotext="x\nSteps: 3, Seed: 5, Size: 64x64, RNG: GPU"), options())
    assert req.override_settings == {}


def test_setting_casts_follow_the_option_type():
    text = ("x\nSteps: 3, Seed: 5, ENSD: 31337, Eta: 0.5, Schedule rho: 7, SGM noise multiplier: False, "
            "Discard penultimate sigma: false, RNG: CPU, Noise Schedule: Zero Terminal SNR, Extra noise: 0.2")
    req = apply_infotext(Txt2ImgRequest(infotext=text), options())
    # A1111's cast_value: type(default)(value), except that only the text "False" is false.
    assert req.override_settings == {
        "randn_source": "CPU", "img2img_extra_noise": 0.2, "eta_ancestral": 0.5, "rho": 7.0,
        "eta_noise_seed_delta": 31337, "always_discard_next_to_last_sigma": True,
        "sd_noise_schedule": "Zero Terminal SNR",
    }
    assert isinstance(req.override_settings["rho"], float)


def test_model_hash_only_without_disable_weights_auto_swap():
    req = apply_infotext(Txt2ImgRequest(infotext=EXAMPLE_2), options(disable_weights_auto_swap=False,
                                                                     sd_model_checkpoint="demo [abc]"))
    assert req.override_settings["sd_model_checkpoint"] == "6ce0161689"


def test_refiner_needs_a_known_checkpoint():
    text = "x\nSteps: 3, Seed: 5, Refiner: other [1234567890], Refiner switch at: 0.8"
    titles = {"other [1234567890]": "other.onnx [1234567890]"}
    req = apply_infotext(Txt2ImgRequest(infotext=text), options(), checkpoint_title=titles.get)
    assert (req.refiner_checkpoint, req.refiner_switch_at) == ("other.onnx [1234567890]", 0.8)
    req = apply_infotext(Txt2ImgRequest(infotext=text), options(), checkpoint_title={}.get)
    assert req.refiner_checkpoint is None


def test_styles_found_in_the_prompt_are_pasted_as_a_list():
    def extract(prompt, negative):
        return (["cinematic"], prompt.removesuffix(", cinematic"), negative) if "cinematic" in prompt else \
            ([], prompt, negative)

    req = apply_infotext(Txt2ImgRequest(infotext="a cat, cinematic\nSteps: 3, Seed: 5, Size: 64x64"), options(),
                         extract)
    assert (req.prompt, req.styles) == ("a cat", ["cinematic"])


def test_empty_infotext_changes_nothing():
    req = Txt2ImgRequest(infotext="")
    assert apply_infotext(req, options()) is req


def test_every_labelled_option_has_a_distinct_label():
    labels = [label for _, label in OPTION_LABELS]
    assert len(labels) == len(set(labels))
    assert {"CLIP_stop_at_last_layers", "eta_noise_seed_delta", "randn_source", "s_min_uncond"} <= {
        key for key, _ in OPTION_LABELS}


@pytest.mark.parametrize("text,field", [
    ("x\nSteps: many, Seed: 5, Size: 64x64", "steps"),
    ("x\nSteps: 3, Seed: 5x, Size: 64x64", "seed"),
    ("x\nSteps: 3, Seed: 5, CFG scale: high", "cfg_scale"),
    ("x\nSteps: 3, Seed: 5, ENSD: abc", "eta_noise_seed_delta"),
    ("x\nSteps: 3, Seed: 5, Clip skip: 2.5", "CLIP_stop_at_last_layers"),
])
def test_uncastable_values_are_the_clients_mistake(text, field):
    with pytest.raises(InvalidRequest) as exc:
        apply_infotext(Txt2ImgRequest(infotext=text), options())
    assert http_status(exc.value) == 422 and exc.value.field == field


@settings(max_examples=60, deadline=None)
@given(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200),  # lone surrogates: 422 by the schema
    st.lists(st.tuples(st.sampled_from(["Steps", "Seed", "Size", "CFG scale", "Clip skip", "ENSD", "Sampler",
                                        "Hires upscale", "Denoising strength", "Eta", "RNG", "Version"]),
                       st.text(alphabet=st.characters(blacklist_characters=",\n", blacklist_categories=("Cs",)), max_size=12)),
             min_size=3, max_size=8).map(lambda kv: "p\n" + ", ".join(f"{k}: {v}" for k, v in kv)),
))
def test_any_text_is_applied_or_refused_with_a_4xx(text):
    for model in (Txt2ImgRequest, Img2ImgRequest):
        try:
            req = apply_infotext(model(infotext=text), options())
        except InvalidRequest as exc:
            assert 400 <= http_status(exc) < 500
        else:
            assert isinstance(req, model)


# -- over REST ------------------------------------------------------------------------------------------------------


def generate(api, body: dict, kind: str = "txt2img") -> tuple[dict, dict]:
    r = api.post(f"/sdapi/v1/{kind}", json=body)
    assert r.status_code == 200, r.text
    return r.json(), json.loads(r.json()["info"])


@pytest.mark.slow
def test_infotext_alone_reproduces_the_image(api):
    first, info = generate(api, {
        "prompt": "a (red:1.2) circle, blue", "negative_prompt": "blurry", "seed": 1234, "steps": 4,
        "sampler_name": "Euler a", "scheduler": "karras", "cfg_scale": 5.5, "width": 64, "height": 48,
        "subseed": 77, "subseed_strength": 0.3, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5,
        "hr_second_pass_steps": 2, "override_settings": {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337},
    })
    infotext = info["infotexts"][0]
    assert "Clip skip: 2" in infotext and "ENSD: 31337" in infotext and "Hires upscale: 1.5" in infotext
    again, again_info = generate(api, {"infotext": infotext})
    assert again_info["infotexts"] == [infotext]
    assert base64.b64decode(again["images"][0]) == base64.b64decode(first["images"][0])
    # `parameters` echoes the request with the pasted values (A1111 modules/api/api.py: Api.text2imgapi).
    p = again["parameters"]
    assert (p["seed"], p["steps"], p["sampler_name"], p["scheduler"], p["cfg_scale"]) == (1234, 4, "Euler a",
                                                                                         "Karras", 5.5)
    assert (p["width"], p["height"], p["subseed"], p["subseed_strength"]) == (64, 48, 77, 0.3)
    assert (p["enable_hr"], p["hr_scale"], p["denoising_strength"], p["hr_second_pass_steps"]) == (True, 1.5, 0.5, 2)
    assert p["override_settings"] == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}
    assert p["hr_sampler_name"] == "Use same sampler" and p["infotext"] == infotext
    # The settings were this job's only.
    current = api.get("/sdapi/v1/options").json()
    assert current["CLIP_stop_at_last_layers"] == 1 and current["eta_noise_seed_delta"] == 0


@pytest.mark.slow
def test_sent_fields_win_over_the_infotext(api):
    body = {"infotext": SMALL, "seed": 99, "steps": 2, "override_settings": {"CLIP_stop_at_last_layers": 3}}
    response, info = generate(api, body)
    p = response["parameters"]
    assert (p["seed"], p["steps"], p["cfg_scale"], p["width"], p["height"]) == (99, 2, 5.5, 64, 48)
    assert p["override_settings"] == {"CLIP_stop_at_last_layers": 3, "eta_noise_seed_delta": 31337}
    assert (info["seed"], info["steps"], info["clip_skip"]) == (99, 2, 3)
    assert "Clip skip: 3" in info["infotexts"][0] and "ENSD: 31337" in info["infotexts"][0]


@pytest.mark.slow
def test_seed_resize_from_an_infotext_is_swapped(api):
    text = "a red circle\nSteps: 2, Sampler: Euler, Seed: 3, Size: 64x48, Seed resize from: 64x32"
    response, info = generate(api, {"infotext": text})
    p = response["parameters"]
    assert (p["seed_resize_from_h"], p["seed_resize_from_w"]) == (64, 32)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (32, 64)
    assert "Seed resize from: 32x64" in info["infotexts"][0]


@pytest.mark.slow
def test_img2img_takes_only_the_script_fields(api):
    body = {"init_images": [b64(noise_image(64, 64))], "width": 64, "height": 64,
            "infotext": SMALL + ", Denoising strength: 0.3"}
    response, info = generate(api, body, "img2img")
    p = response["parameters"]
    assert (p["steps"], p["sampler_name"], p["scheduler"], p["seed"]) == (3, "Euler a", "Karras", 1234)
    assert (p["prompt"], p["negative_prompt"], p["cfg_scale"], p["denoising_strength"]) == ("", "", 7.0, 0.75)
    assert p["override_settings"] == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}
    assert (info["prompt"], info["cfg_scale"], info["denoising_strength"], info["clip_skip"]) == ("", 7.0, 0.75, 2)


@pytest.mark.parametrize("text,field", [
    ("x\nSteps: many, Seed: 5, Size: 64x64", "steps"),
    ("x\nSteps: 2, Seed: 5, Size: 64x64, ENSD: lots", "eta_noise_seed_delta"),
    ("x\nSteps: 2, Seed: 5, Size: 64x64, Clip skip: 40", "override_settings"),
    ("x\nSteps: 2, Seed: 5, Size: 0x64", "width"),
    ("x\nSteps: 2, Seed: 5, Size: 64x64, Hires sampler: Nope, Denoising strength: 0.5", "hr_sampler_name"),
])
@pytest.mark.slow
def test_bad_infotext_values_get_a_4xx_and_the_server_keeps_serving(api, text, field):
    r = api.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "InvalidRequest" and body["detail"].startswith(f"{field}:")
    generate(api, {"steps": 1, "width": 64, "height": 64})


def test_garbage_infotext_becomes_the_prompt(api):
    # Fewer than three `key: value` pairs: A1111 reads the whole text as the prompt (A1111
    # modules/infotext_utils.py: parse_generation_parameters).
    garbage = "((( ]]] :: ,,, <lora: \\ \"unterminated"
    response, info = generate(api, {"infotext": garbage, "steps": 1, "width": 64, "height": 64})
    assert response["parameters"]["prompt"] == garbage
    assert response["parameters"]["override_settings"] == {}


# -- over gRPC ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grpc_infotext(grpc_in_process):
    grpc_stub = grpc_in_process[1]
    from google.protobuf import json_format

    from service.generated import sdedge_pb2 as pb

    r = grpc_stub.Txt2Img(pb.Txt2ImgRequest(infotext=SMALL, steps=2), timeout=60)
    assert (r.info.seed, r.info.steps, r.info.cfg_scale, r.info.clip_skip) == (1234, 2, 5.5, 2)
    assert (r.info.width, r.info.height, r.info.sampler_name) == (64, 48, "Euler a")
    params = json_format.MessageToDict(r.parameters)
    assert params["override_settings"] == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}
    with pytest.raises(grpc.RpcError) as exc:
        grpc_stub.Txt2Img(pb.Txt2ImgRequest(infotext="x\nSteps: many, Seed: 5, Size: 64x64"), timeout=60)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "steps" in exc.value.details()

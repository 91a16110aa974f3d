"""Hires fix with A1111's semantics (A1111 modules/processing.py:
StableDiffusionProcessingTxt2Img.init, sample_hr_pass; modules/api/models.py:
StableDiffusionTxt2ImgProcessingAPI): target sizes and latent
crops, latent upscale modes (torch's interpolate as reference), image upscalers, the second pass's step count
and the Hires infotext keys."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from engine.image_ops import LATENT_UPSCALE_MODES, resize_latents
from engine.img2img import hires_size
from engine.plan import GenerationPlan, HiresPlan
from tests.schedules import plan_sigmas


@pytest.mark.parametrize("size,scale,resize,target,final", [
    ((64, 64), 1.5, (0, 0), (96, 96, 0, 0), (96, 96)),
    ((512, 768), 2.0, (0, 0), (1024, 1536, 0, 0), (1024, 1536)),
    ((72, 64), 1.5, (0, 0), (108, 96, 0, 0), (104, 96)),  # int(72·1.5) = 108: the latent floors to 13
    ((512, 768), 2.0, (1024, 0), (1024, 1536, 0, 0), (1024, 1536)),  # one side keeps the aspect ratio
    ((512, 768), 2.0, (0, 1000), (666, 1000, 0, 0), (664, 1000)),
    # Both sides: cover the box, then crop the latent (truncate = excess // 8).
    ((64, 64), 2.0, (128, 96), (128, 128, 0, 4), (128, 96)),
    ((64, 48), 2.0, (96, 96), (128, 96, 4, 0), (96, 96)),
    ((512, 512), 2.0, (1024, 600), (1024, 1024, 0, 53), (1024, 600)),
])
def test_target_sizes(size, scale, resize, target, final):
    hs = hires_size(*size, scale, *resize)
    assert (hs.width, hs.height, hs.truncate_x, hs.truncate_y) == target
    assert hs.final_size() == final


@pytest.mark.parametrize("name", list(LATENT_UPSCALE_MODES))
@pytest.mark.parametrize("src,dst", [((8, 8), (12, 12)), ((7, 9), (13, 10)), ((8, 6), (16, 12)), ((9, 11), (5, 4))])
def test_latent_upscale_modes_match_torch(name, src, dst):
    import torch

    mode, antialias = LATENT_UPSCALE_MODES[name]
    x = np.random.default_rng(src[0] * dst[1]).standard_normal((2, 4, *src)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode=mode, antialias=antialias)
    np.testing.assert_allclose(resize_latents(x, *dst, mode, antialias), expected.numpy(), atol=1e-5)


def hires_plan(pipeline, width=64, height=64, scale=1.5, resize=(0, 0), upscaler="Latent", steps=3, hr_steps=0,
               strength=0.5, seeds=(1,), hr_sampler="Euler") -> GenerationPlan:
    n = len(seeds)
    hs = hires_size(width, height, scale, *resize)
    second = hr_steps or steps
    hires = HiresPlan(
        width=hs.width, height=hs.height, truncate_x=hs.truncate_x, truncate_y=hs.truncate_y, upscaler=upscaler,
        sampler=hr_sampler, scheduler="automatic", steps=second, denoising_strength=strength,
        prompts=("a red circle",) * n, negative_prompts=("",) * n,
    )
    return GenerationPlan(
        prompts=("a red circle",) * n, negative_prompts=("",) * n, seeds=tuple(seeds), subseeds=tuple(seeds),
        width=width, height=height, steps=steps, cfg_scale=7.0, sampler="Euler", scheduler="automatic",
        batch_size=n, hires=hires,
    )


@pytest.mark.parametrize("kwargs,final", [
    ({"scale": 1.5}, (96, 96)),
    ({"width": 64, "height": 48, "resize": (96, 96)}, (96, 96)),
    ({"scale": 1.5, "upscaler": "Lanczos"}, (96, 96)),
    ({"width": 72, "height": 64, "scale": 1.5, "upscaler": "Nearest"}, (104, 96)),
    ({"scale": 1.25, "upscaler": "None"}, (80, 80)),
    ({"scale": 1.5, "upscaler": "Latent (bicubic antialiased)"}, (96, 96)),
])
@pytest.mark.slow
def test_output_sizes(demo_pipeline, kwargs, final):
    result = demo_pipeline.txt2img(hires_plan(demo_pipeline, **kwargs))
    assert result.images[0].size == final
    assert result.latents[0].shape[1:] == (final[1] // 8, final[0] // 8)


@pytest.mark.parametrize("steps,hr_steps,strength", [(3, 0, 0.5), (3, 5, 0.5), (2, 4, 0.3), (4, 2, 1.0)])
@pytest.mark.slow
def test_second_pass_runs_exactly_its_steps(demo_pipeline, steps, hr_steps, strength):
    events = []
    plan = hires_plan(demo_pipeline, steps=steps, hr_steps=hr_steps, strength=strength, seeds=(1, 2))
    demo_pipeline.txt2img(plan, on_step=events.append)
    per_job = Counter(e.job_no for e in events)
    assert per_job == {0: steps, 1: hr_steps or steps}
    assert {e.job_count for e in events} == {2}
    # A1111 passes the steps explicitly, so int(steps / strength) steps are built and the last ones run.
    assert len(plan_sigmas(demo_pipeline, plan, hires=True)) == (hr_steps or steps) + 1


def test_hires_batch_independence(demo_pipeline):
    batch = demo_pipeline.txt2img(hires_plan(demo_pipeline, seeds=(4, 5)))
    alone = demo_pipeline.txt2img(hires_plan(demo_pipeline, seeds=(5,)))
    np.testing.assert_allclose(batch.latents[1], alone.latents[0], atol=1e-4)


@pytest.mark.slow
def test_hires_on_the_inpainting_model(demo_inpaint_bundle):
    from engine.pipeline import Pipeline

    pipeline = Pipeline.from_path(demo_inpaint_bundle)
    for upscaler in ("Latent", "Lanczos"):
        result = pipeline.txt2img(hires_plan(pipeline, upscaler=upscaler, steps=2))
        assert result.images[0].size == (96, 96) and np.isfinite(result.latents[0]).all()


# ---- the REST endpoint ------------------------------------------------------------------------------------


def post(api, **fields):
    body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3, "enable_hr": True,
            "denoising_strength": 0.5, **fields}
    return api.post("/sdapi/v1/txt2img", json=body)


def image_of(response) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))


@pytest.mark.slow
def test_hires_request_sizes_and_infotext(api):
    r = post(api, hr_scale=1.5, hr_second_pass_steps=3, hr_upscaler="Latent (nearest)")
    assert r.status_code == 200, r.text
    assert image_of(r).size == (96, 96)
    infotext = json.loads(r.json()["info"])["infotexts"][0]
    assert infotext.endswith("Size: 64x64, Model hash: " + infotext.split("Model hash: ")[1].split(",")[0]
                             + ", Model: sdedge-tiny, Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 3, "
                             "Hires upscaler: Latent (nearest), Version: v1.10.1")
    r = post(api, hr_resize_x=96, hr_resize_y=80, hr_prompt="a blue square", hr_sampler_name="Euler a")
    assert r.status_code == 200, r.text
    assert image_of(r).size == (96, 80)
    infotext = json.loads(r.json()["info"])["infotexts"][0]
    assert "Denoising strength: 0.5, Hires sampler: Euler a, Hires prompt: a blue square, Hires resize: 96x80," \
        in infotext
    info = json.loads(r.json()["info"])
    assert info["width"] == 64 and info["extra_generation_params"]["Hires resize"] == "96x80"


def test_legacy_firstphase_size(api):
    r = post(api, width=96, height=96, firstphase_width=64, firstphase_height=64)
    assert r.status_code == 200, r.text
    # A1111's calculate_target_resolution recomputes the target from hr_scale (2.0): width×height are dropped.
    assert image_of(r).size == (128, 128)
    assert "Size: 64x64" in json.loads(r.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("fields,detail", [
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "could not find upscaler"),
    ({"hr_sampler_name": "Nope"}, "bad sampler name"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"hr_scale": -1}, "hr_scale"),
    ({"hr_second_pass_steps": -2}, "hr_second_pass_steps"),
])
@pytest.mark.slow
def test_bad_hires_fields_are_4xx(api, fields, detail):
    r = post(api, **fields)
    assert r.status_code == 422 and detail in str(r.json()["detail"])  # a string, or pydantic's list
    assert post(api, hr_scale=1.25).status_code == 200


def write_x2_upscaler(path):
    """A model upscaler as an ONNX file: RGB [1, 3, H, W] → nearest ×2."""
    import onnx
    from onnx import TensorProto, helper

    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    graph = helper.make_graph(
        [node], "x2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "H", "W"])], initializer=[scales],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.mark.slow
def test_hires_with_a_model_upscaler(demo_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    (tmp_path / "upscalers").mkdir()
    write_x2_upscaler(tmp_path / "upscalers" / "Tiny-2x.onnx")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp_path / "m", options_file=tmp_path / "o.json",
                                     upscalers_dir=tmp_path / "upscalers"))
    with TestClient(create_app(state)) as client:
        listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
        assert list(listed)[:3] == ["None", "Lanczos", "Nearest"] and listed["Tiny-2x"]["scale"] == 2.0
        r = post(client, hr_scale=1.5, hr_upscaler="Tiny-2x")
        assert r.status_code == 200, r.text
        assert image_of(r).size == (96, 96)
        assert "Hires upscaler: Tiny-2x" in json.loads(r.json()["info"])["infotexts"][0]
    state.close()


def test_hires_brownian_trees_span_the_second_pass_full_schedule(demo_pipeline, brownian_spans):
    # A1111 modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample_img2img: the hires pass (fixed steps)
    # builds int(steps / strength) sigmas
    # and walks their tail; its trees span the whole of them.
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.a1111.translate import plan_txt2img
    from service.runtime.options import DEFAULTS

    req = Txt2ImgRequest(prompt="a", seed=2, steps=4, width=64, height=64, sampler_name="DPM++ SDE",
                         enable_hr=True, hr_scale=1.5, denoising_strength=0.5)
    plan = plan_txt2img(req, DEFAULTS)
    demo_pipeline.txt2img(plan)
    first = demo_pipeline.sigmas("DPM++ SDE", "karras", 4).astype(np.float32)
    second = demo_pipeline.sigmas("DPM++ SDE", "karras", 8).astype(np.float32)  # int(4 / 0.5)
    assert brownian_spans == [(float(s[s > 0].min()), float(s.max())) for s in (first, second)]

"""img2img with A1111's semantics: step counting for a denoising strength (A1111
modules/sd_samplers_common.py: setup_img2img_steps), the VAE
encoder against diffusers, the sampled trajectory against diffusers' img2img, batches, resize modes, and
POST /sdapi/v1/img2img with its 4xx answers to bad input (A1111 modules/api/models.py:
StableDiffusionImg2ImgProcessingAPI; modules/api/api.py: decode_base64_to_image)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine import image_ops
from engine.images import encode_images
from engine.img2img import denoising_schedule, encoder_noise, img2img_steps
from engine.plan import GenerationPlan, Img2ImgPlan
from tests.images import b64, noise_image
from tests.schedules import plan_sigmas

CFG = 7.0


def img2img_plan(pipeline, images, strength=0.5, steps=6, seeds=(1,), fix_steps=False, width=64, height=64,
                 sampler="Euler", **img2img) -> GenerationPlan:
    n = len(seeds)
    batch = n if len(images) == 1 else len(images)
    return GenerationPlan(
        prompts=("a red circle",) * n, negative_prompts=("",) * n, seeds=tuple(seeds), subseeds=tuple(seeds),
        width=width, height=height, steps=steps, cfg_scale=CFG, sampler=sampler, scheduler="automatic",
        batch_size=batch, n_iter=n // batch,
        img2img=Img2ImgPlan(tuple(images), strength, fix_steps=fix_steps, **img2img),
    )


class CountingBackend:
    """Counts the UNet calls of the wrapped backend."""

    def __init__(self, backend):
        self.backend = backend
        self.unet_calls = 0

    def run(self, component, inputs):
        self.unet_calls += component == "unet"
        return self.backend.run(component, inputs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_step_counting_matches_the_spec_example():
    # A1111 modules/sd_samplers_common.py: setup_img2img_steps: steps 20, d 0.5 → t_enc 10 (11 model steps);
    # with img2img_fix_steps 40 and 19.
    assert img2img_steps(20, 0.5, False) == (20, 10)
    assert img2img_steps(20, 0.5, True) == (40, 19)
    assert img2img_steps(20, 0.0, True) == (0, 19)
    sigmas = np.arange(41, dtype=float)[::-1]
    assert denoising_schedule(lambda n: sigmas[-(n + 1):], 20, 0.5, False) == tuple(sigmas[-21:][9:])
    assert len(denoising_schedule(lambda n: sigmas[-(n + 1):], 20, 0.5, True)) == 21


@pytest.mark.parametrize("steps,strength,fix_steps,calls", [
    (20, 0.5, False, 11), (20, 0.5, True, 20), (10, 0.75, False, 8), (4, 1.0, False, 4), (10, 0.05, False, 1),
    (3, 0.0, False, 1), (3, 0.0, True, 0), (5, 0.3, True, 5),
])
@pytest.mark.slow
def test_unet_calls_equal_a1111_count(demo_pipeline, monkeypatch, steps, strength, fix_steps, calls):
    counter = CountingBackend(demo_pipeline.unet.backend)
    monkeypatch.setattr(demo_pipeline.unet, "backend", counter)
    events = []
    plan = img2img_plan(demo_pipeline, [noise_image(64, 64)], strength, steps, fix_steps=fix_steps)
    demo_pipeline.img2img(plan, on_step=events.append)
    assert counter.unet_calls == calls  # cond and uncond share one UNet batch per step
    assert len(events) == calls and all(e.steps == calls for e in events)


@pytest.mark.slow
def test_vae_encoder_mean_and_posterior_sample_match_diffusers(demo_pipeline, torch_pipeline):
    import torch

    pixels = image_ops.to_array([noise_image(64, 48, 2), noise_image(64, 48, 3)])
    scale = demo_pipeline.manifest.vae_scaling_factor
    ours_mean = encode_images(demo_pipeline.backend, demo_pipeline.manifest, pixels)
    # A1111 reseeds torch's global CPU generator with the batch's last seed, then encodes image by image.
    ours_sample = encode_images(demo_pipeline.backend, demo_pipeline.manifest, pixels, encoder_noise([7, 1234], "GPU"))
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        ref_mean, ref_sample = [], []
        for image in torch.from_numpy(pixels * 2 - 1):
            dist = torch_pipeline.vae.encode(image[None]).latent_dist
            ref_mean.append(dist.mean.numpy() * scale)
            ref_sample.append(dist.sample(generator=generator).numpy() * scale)
    np.testing.assert_allclose(ours_mean, np.concatenate(ref_mean), atol=2e-5)
    np.testing.assert_allclose(ours_sample, np.concatenate(ref_sample), atol=2e-5)
    assert np.abs(ours_sample - ours_mean).max() > 1e-3
    assert encoder_noise([1], "NV") is None  # A1111's draw is not reproducible there: posterior mean


@pytest.mark.parametrize("steps,strength", [(10, 0.5), (10, 0.3), (4, 0.75)])
def test_trajectory_matches_diffusers_img2img(demo_pipeline, torch_pipeline, steps, strength):
    """diffusers' img2img with Euler over the same sigmas, started t_enc + 1 steps from the end."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    image = noise_image(64, 64, 5)
    plan = img2img_plan(demo_pipeline, [image], strength, steps)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ours = np.stack(demo_pipeline.img2img(plan, initial_noise=noise.numpy()).latents)

    scheduler = EulerDiscreteScheduler.from_config(torch_pipeline.scheduler.config, timestep_spacing="linspace")
    reference = StableDiffusionImg2ImgPipeline(**{**torch_pipeline.components, "scheduler": scheduler},
                                               requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    _, t_enc = img2img_steps(steps, strength, False)
    init = encode_images(demo_pipeline.backend, demo_pipeline.manifest, image_ops.to_array([image]))
    with torch.no_grad():
        expected = reference(
            prompt="a red circle", negative_prompt="", image=torch.from_numpy(init), guidance_scale=CFG,
            sigmas=[float(s) for s in demo_pipeline.sigmas("Euler", "automatic", steps)],
            strength=min(1.0, (t_enc + 1.5) / steps), generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).images.numpy()
    assert len(plan_sigmas(demo_pipeline, plan)) - 1 == t_enc + 1
    assert np.abs(ours - expected).max() <= 5e-6 * np.abs(expected).max()


def test_strength_zero_is_the_reconstruction(demo_pipeline):
    image = noise_image(64, 64, 6)
    init = encode_images(demo_pipeline.backend, demo_pipeline.manifest, image_ops.to_array([image]))
    fixed = demo_pipeline.img2img(img2img_plan(demo_pipeline, [image], 0.0, 5, fix_steps=True))
    np.testing.assert_array_equal(fixed.latents[0], init[0])  # nothing is denoised
    decoded = demo_pipeline._decode(init)[0]
    np.testing.assert_array_equal(np.asarray(fixed.images[0]), np.asarray(decoded))
    # Without fixed steps A1111 still runs one step, from the smallest σ of the schedule.
    plan = img2img_plan(demo_pipeline, [image], 0.0, 5)
    assert plan_sigmas(demo_pipeline, plan) == (float(demo_pipeline.sigmas("Euler", "automatic", 5)[-2]), 0.0)


def test_strength_one_starts_from_noise(demo_pipeline):
    from tests.engine.test_engine_smoke import make_plan

    txt2img = demo_pipeline.txt2img(make_plan(demo_pipeline, steps=6, seeds=(3,)))
    diffs = {}
    for strength in (1.0, 0.5):
        plan = img2img_plan(demo_pipeline, [Image.new("RGB", (64, 64), (255, 255, 255))], strength, 6, seeds=(3,))
        if strength == 1.0:
            # the full txt2img schedule
            assert plan_sigmas(demo_pipeline, plan) == plan_sigmas(demo_pipeline, make_plan(demo_pipeline, steps=6))
        out = demo_pipeline.img2img(plan).images[0]
        diffs[strength] = np.abs(np.asarray(out, float) - np.asarray(txt2img.images[0], float)).mean()
    assert diffs[1.0] < 1.0 < diffs[0.5]


def test_initial_noise_multiplier_scales_the_noise(demo_pipeline):
    image = noise_image(64, 64, 7)
    plan = img2img_plan(demo_pipeline, [image], 0.6, 5, seeds=(9,))
    noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    scaled = demo_pipeline.img2img(img2img_plan(demo_pipeline, [image], 0.6, 5, seeds=(9,),
                                                initial_noise_multiplier=0.5), initial_noise=noise)
    manual = demo_pipeline.img2img(plan, initial_noise=noise * 0.5)
    plain = demo_pipeline.img2img(plan, initial_noise=noise)
    np.testing.assert_array_equal(scaled.latents[0], manual.latents[0])
    assert np.abs(scaled.latents[0] - plain.latents[0]).max() > 1e-2


def test_one_init_image_serves_the_batch_and_several_set_it(demo_pipeline):
    a, b = noise_image(64, 64, 10), noise_image(64, 64, 11)
    batch = demo_pipeline.img2img(img2img_plan(demo_pipeline, [a], 0.5, 4, seeds=(20, 21)))
    alone = demo_pipeline.img2img(img2img_plan(demo_pipeline, [a], 0.5, 4, seeds=(21,)))
    np.testing.assert_allclose(batch.latents[1], alone.latents[0], atol=1e-5)
    pair = demo_pipeline.img2img(img2img_plan(demo_pipeline, [a, b], 0.5, 4, seeds=(20, 21)))
    other = demo_pipeline.img2img(img2img_plan(demo_pipeline, [b], 0.5, 4, seeds=(21,)))
    np.testing.assert_allclose(pair.latents[1], other.latents[0], atol=1e-5)
    np.testing.assert_allclose(pair.latents[0], batch.latents[0], atol=1e-5)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_resize_modes_feed_the_resized_image(demo_pipeline, mode):
    image = noise_image(96, 40, 12)
    result = demo_pipeline.img2img(img2img_plan(demo_pipeline, [image], 0.0, 3, fix_steps=True, width=64,
                                                height=48, resize_mode=mode))
    assert result.images[0].size == (64, 48)
    resized = image_ops.resize_image(mode, image, 64, 48)
    expected = encode_images(demo_pipeline.backend, demo_pipeline.manifest, image_ops.to_array([resized]))
    np.testing.assert_allclose(result.latents[0], expected[0], atol=1e-6)


def test_latent_upscale_resize_mode_interpolates_the_latent(demo_pipeline):
    import torch

    image = noise_image(32, 40, 13)
    result = demo_pipeline.img2img(img2img_plan(demo_pipeline, [image], 0.0, 3, fix_steps=True, width=64, height=64,
                                                resize_mode=3))
    small = encode_images(demo_pipeline.backend, demo_pipeline.manifest, image_ops.to_array([image]))
    expected = torch.nn.functional.interpolate(torch.from_numpy(small), size=(8, 8), mode="bilinear").numpy()
    assert result.images[0].size == (64, 64)
    np.testing.assert_allclose(result.latents[0], expected[0], atol=1e-5)


# ---- the REST endpoint ------------------------------------------------------------------------------------


def png_bytes_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image with almost no data: a decompression bomb's first bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.slow
def test_img2img_endpoint(api):
    body = {"init_images": ["data:image/png;base64," + b64(noise_image(80, 80))], "prompt": "a cat", "seed": 5,
            "steps": 4, "width": 64, "height": 64, "denoising_strength": 0.5, "batch_size": 2,
            "resize_mode": 1, "initial_noise_multiplier": 0.9}
    r = api.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["images"]) == 2
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert image.size == (64, 64)
    info = json.loads(data["info"])
    assert info["denoising_strength"] == 0.5 and info["all_seeds"][:2] == [5, 6]
    assert "Denoising strength: 0.5, Noise multiplier: 0.9," in info["infotexts"][0]
    assert data["parameters"]["init_images"] is None  # include_init_images defaults to false
    assert r.headers["X-Task-Id"].startswith("task(img2img-")
    body["include_init_images"] = True
    body["batch_size"] = 1
    r = api.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200 and r.json()["parameters"]["init_images"] == body["init_images"]


@pytest.mark.slow
def test_bad_input_gets_4xx_and_the_server_keeps_serving(api):
    good = b64(noise_image(64, 64))
    png = base64.b64decode(good)
    truncated = base64.b64encode(png[: len(png) // 2]).decode()
    bomb = base64.b64encode(png_bytes_claiming(30000, 30000)).decode()
    mask = b64(Image.new("L", (32, 32), 255))
    base = {"steps": 2, "width": 64, "height": 64}
    cases = [
        ({"init_images": ["this is not base64!"]}, 422, "init_images[0]"),
        ({"init_images": ["data:image/png;base64,QUJD"]}, 422, "init_images[0]"),  # base64 of "ABC"
        ({"init_images": [truncated]}, 422, "truncated"),
        ({"init_images": [bomb]}, 413, "limit"),
        ({"init_images": [good], "mask": mask}, 422, "same size"),
        ({"init_images": [good], "denoising_strength": 2}, 422, "denoising_strength"),
        ({"init_images": [good], "resize_mode": 5}, 422, "resize_mode"),
        ({"init_images": [good], "inpainting_fill": 4}, 422, "inpainting_fill"),
        ({"init_images": [good, good, good], "batch_size": 2}, 422, "bad number of images"),
        ({"init_images": ["http://127.0.0.1/x.png"]}, 403, "requests not allowed"),
        ({}, 404, "Init image not found"),
    ]
    for body, status, detail in cases:
        r = api.post("/sdapi/v1/img2img", json={**base, **body})
        assert r.status_code == status, (body, r.text)
        data = r.json()
        assert set(data) == {"error", "detail", "body", "errors"} and detail in str(data["detail"])
    r = api.post("/sdapi/v1/img2img", json={**base, "init_images": [good]})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_upscaler_listings(api):
    upscalers = api.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in api.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]


@pytest.mark.parametrize("strength, fix_steps, total", [(0.5, False, 6), (0.5, True, 12), (0.3, False, 6)])
def test_sde_brownian_trees_span_the_full_schedule(demo_pipeline, brownian_spans, strength, fix_steps, total):
    # A1111 modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample_img2img: img2img's trees span the
    # schedule its walked tail is cut from.
    from service.a1111.sdapi_models import Img2ImgRequest
    from service.a1111.translate import plan_img2img
    from service.runtime.options import DEFAULTS

    req = Img2ImgRequest(init_images=[b64(noise_image(64, 64))], denoising_strength=strength, steps=6, seed=1,
                         sampler_name="DPM++ 2M SDE", width=64, height=64)
    plan = plan_img2img(req, {**DEFAULTS, "img2img_fix_steps": fix_steps})
    demo_pipeline.img2img(plan)
    full = demo_pipeline.sigmas("DPM++ 2M SDE", "exponential", total).astype(np.float32)
    assert len(full) == total + 1
    assert brownian_spans == [(float(full[full > 0].min()), float(full.max()))]
    assert brownian_spans[0][1] > plan_sigmas(demo_pipeline, plan)[0]  # the tail starts below the trees' top

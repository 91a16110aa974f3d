"""The engine's txt2img equals diffusers' StableDiffusionPipeline run here on the same weights and latents.

A1111's "Euler" with the Automatic (→ uniform) schedule is k-diffusion's Euler over
`sigmas = t_to_sigma(linspace(999, 0, n)) ‖ 0`, started at x_T = noise·σ₀, with the UNet called at
t = sigma_to_t(σ) on x·1/√(σ²+1). diffusers' EulerDiscreteScheduler given the same `sigmas=` derives its
timesteps with the same log-space interpolation and, with `timestep_spacing="linspace"`, uses
init_noise_sigma = max(sigmas) = σ₀; the tests below check those two facts as well as the outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.images import decode_latents
from engine.plan import GenerationPlan
from engine.schedules import get_sigmas_uniform

STEPS = 8
CFG = 7.0
# Final latents of the random-weight demo model reach |x| ≈ 50, so latents are compared relative to scale.
LATENT_RTOL = 5e-6
IMAGE_ATOL = 1e-4


def euler_reference(torch_pipeline):
    """The fixture's components with diffusers' Euler scheduler configured as A1111's Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    # The demo's PNDM config says timestep_spacing="leading", which would make init_noise_sigma
    # √(σ₀²+1) instead of σ₀: k-diffusion starts at noise·σ₀.
    scheduler = EulerDiscreteScheduler.from_config(torch_pipeline.scheduler.config, timestep_spacing="linspace")
    pipe = StableDiffusionPipeline(**{**torch_pipeline.components, "scheduler": scheduler},
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_plan(pipeline, prompts, negative_prompts, width, height) -> GenerationPlan:
    n = len(prompts)
    return GenerationPlan(
        prompts=tuple(prompts), negative_prompts=tuple(negative_prompts), seeds=tuple(range(n)),
        subseeds=tuple(range(n)), width=width, height=height, steps=STEPS, cfg_scale=CFG, sampler="Euler",
        scheduler="automatic", batch_size=n,
    )


def run_both(demo_pipeline, torch_pipeline, prompts, negative_prompts, width, height, seed=0):
    import torch

    plan = make_plan(demo_pipeline, prompts, negative_prompts, width, height)
    shape = (len(prompts), *demo_pipeline.latent_shape(width, height))
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    result = demo_pipeline.txt2img(plan, initial_noise=noise)
    latents = np.stack(result.latents)
    images = decode_latents(demo_pipeline.backend, demo_pipeline.manifest, latents)

    reference = euler_reference(torch_pipeline)
    sigmas = tuple(float(s) for s in get_sigmas_uniform(demo_pipeline.schedule, STEPS))
    common = dict(
        prompt=list(prompts), negative_prompt=list(negative_prompts), width=width, height=height,
        guidance_scale=CFG, sigmas=list(sigmas),
    )
    with torch.no_grad():
        ref_latents = reference(**common, latents=torch.from_numpy(noise), output_type="latent").images.numpy()
        ref_images = reference(**common, latents=torch.from_numpy(noise), output_type="np").images
    assert float(reference.scheduler.init_noise_sigma) == pytest.approx(sigmas[0], rel=1e-6)
    return result, latents, images, ref_latents, np.moveaxis(ref_images, -1, 1)


def assert_same(latents, images, ref_latents, ref_images):
    assert latents.shape == ref_latents.shape
    assert np.abs(latents - ref_latents).max() <= LATENT_RTOL * np.abs(ref_latents).max()
    assert images.shape == ref_images.shape
    assert np.abs(images - ref_images).max() <= IMAGE_ATOL
    # Not a trivial comparison: the image is mostly unsaturated and not flat.
    assert ((ref_images > 0.01) & (ref_images < 0.99)).mean() > 0.5
    assert ref_images.std() > 0.05


@pytest.mark.parametrize("width,height", [(64, 64), (72, 136)])
@pytest.mark.slow
def test_txt2img_matches_diffusers_euler(demo_pipeline, torch_pipeline, width, height):
    result, latents, images, ref_latents, ref_images = run_both(
        demo_pipeline, torch_pipeline, ["a red circle"], [""], width, height
    )
    assert_same(latents, images, ref_latents, ref_images)
    # The PNG pixels are the same image: A1111 truncates 255·x where diffusers would round.
    pixels = np.asarray(result.images[0]).astype(np.int16)
    ref_pixels = np.floor(255.0 * np.moveaxis(ref_images[0], 0, -1)).astype(np.int16)
    assert result.images[0].size == (width, height)
    assert np.abs(pixels - ref_pixels).max() <= 1


@pytest.mark.slow
def test_batch_of_two_with_negative_prompts_matches_diffusers(demo_pipeline, torch_pipeline):
    prompts = ["a red circle on grass", "a blue square"]
    negatives = ["blurry", "ugly, low quality"]
    _, latents, images, ref_latents, ref_images = run_both(
        demo_pipeline, torch_pipeline, prompts, negatives, 64, 64, seed=1
    )
    assert_same(latents, images, ref_latents, ref_images)
    assert np.abs(latents[0] - latents[1]).max() > 1e-2  # the two images are really different


def test_unet_is_called_like_diffusers_euler(demo_pipeline, torch_pipeline, monkeypatch):
    """Step by step, the UNet sees the same scaled input and timestep in both implementations.

    The random demo UNet's output hardly depends on t, so the final image alone would not notice a
    wrong σ → t map; this compares every call.
    """
    engine_calls: list[tuple[np.ndarray, np.ndarray]] = []
    run = demo_pipeline.backend.run

    def recording_run(component, inputs):
        if component == "unet":
            engine_calls.append((inputs["sample"].copy(), np.asarray(inputs["timestep"]).copy()))
        return run(component, inputs)

    monkeypatch.setattr(demo_pipeline.backend, "run", recording_run)
    ref_calls: list[tuple[np.ndarray, np.ndarray]] = []

    def hook(_module, args, kwargs):
        ref_calls.append((args[0].detach().numpy().copy(), np.asarray(args[1], dtype=np.float64)))

    handle = torch_pipeline.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run_both(demo_pipeline, torch_pipeline, ["a red circle"], ["blurry"], 64, 64, seed=2)
    finally:
        handle.remove()

    ref_calls = ref_calls[:STEPS]  # the second reference run (decoded output) repeats the first
    assert len(engine_calls) == len(ref_calls) == STEPS
    for (sample, t), (ref_sample, ref_t) in zip(engine_calls, ref_calls, strict=True):
        # Both put [cond, uncond] or [uncond, cond] copies of the same x·c_in in one batch of 2.
        assert sample.shape == ref_sample.shape == (2, 4, 8, 8)
        np.testing.assert_allclose(sample[0], ref_sample[0], rtol=0, atol=1e-5 * np.abs(ref_sample).max())
        # diffusers builds alphas_cumprod in float32, A1111 in float64: t agrees to ~1e-4.
        np.testing.assert_allclose(np.broadcast_to(t, (2,)), float(ref_t), atol=2e-3)

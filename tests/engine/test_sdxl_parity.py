"""SDXL through our exporter and NumPy loop equals diffusers' StableDiffusionXLPipeline on the same weights.

Reduced-width random SDXL models are built from the shipped configs (export/sdxl_demo.py), exported, and run
by both with the same initial noise and A1111's Euler σ schedule (see test_reference_diffusers.py for why
diffusers' Euler with `timestep_spacing="linspace"` and `sigmas=` is k-diffusion's Euler). Every UNet call's
inputs are compared too: sample, timestep, context, pooled text embedding and time ids, row by row.

A1111 and diffusers differ on the empty negative prompt: A1111 encodes an all-empty negative prompt as zeros
(context and pooled; modules/sd_models_xl.py: get_learned_conditioning, `force_zero_negative_prompt`);
diffusers does so only when `negative_prompt` is None (`force_zeros_for_empty_prompt`) and encodes "" otherwise.
Our "" is compared with diffusers' None.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.images import decode_latents
from engine.plan import GenerationPlan
from engine.schedules import get_sigmas_uniform

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

STEPS = 6
CFG = 5.0
IMAGE_ATOL = 1e-4
LATENT_RTOL = 5e-6


@pytest.fixture(scope="module")
def sdxl_torch():
    from export.sdxl_demo import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(seed=0)


@pytest.fixture(scope="module")
def sdxl_bundle(sdxl_torch, tmp_path_factory):
    from export.onnx_export import export_pipeline

    return export_pipeline(sdxl_torch, tmp_path_factory.mktemp("sdxl") / "tiny-sdxl", name="tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl_pipeline(sdxl_bundle):
    from engine.pipeline import Pipeline

    return Pipeline.from_path(sdxl_bundle)


def reference(pipe):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    ref = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": scheduler})
    ref.set_progress_bar_config(disable=True)
    return ref


SAME = object()


def run_both(ours, theirs, prompts, negatives, width, height, seed=0, ref_negatives=SAME):
    n = len(prompts)
    plan = GenerationPlan(
        prompts=tuple(prompts), negative_prompts=tuple(negatives), seeds=tuple(range(n)), subseeds=tuple(range(n)),
        width=width, height=height, steps=STEPS, cfg_scale=CFG, sampler="Euler", scheduler="automatic", batch_size=n,
    )
    noise = np.random.default_rng(seed).standard_normal((n, *ours.latent_shape(width, height))).astype(np.float32)
    result = ours.txt2img(plan, initial_noise=noise)
    latents = np.stack(result.latents)
    images = decode_latents(ours.backend, ours.manifest, latents)
    ref = reference(theirs)
    sigmas = [float(s) for s in get_sigmas_uniform(ours.schedule, STEPS)]
    common = dict(prompt=list(prompts), negative_prompt=list(negatives) if ref_negatives is SAME else ref_negatives,
                  width=width, height=height, guidance_scale=CFG, sigmas=sigmas)
    with torch.no_grad():
        out = ref(**common, latents=torch.from_numpy(noise), output_type="latent").images.numpy()
        ref_images = ref(**common, latents=torch.from_numpy(noise), output_type="np").images
    return latents, images, out, np.moveaxis(ref_images, -1, 1)


def assert_same(latents, images, ref_latents, ref_images):
    assert latents.shape == ref_latents.shape
    assert np.abs(latents - ref_latents).max() <= LATENT_RTOL * np.abs(ref_latents).max()
    assert np.abs(images - ref_images).max() <= IMAGE_ATOL
    assert ref_images.std() > 0.02  # not a flat image


def test_txt2img_matches_diffusers_with_negative_prompt(sdxl_pipeline, sdxl_torch):
    assert sdxl_pipeline.manifest.architecture == "sdxl"
    assert sdxl_pipeline.manifest.vae_scaling_factor == pytest.approx(0.13025)
    assert_same(*run_both(sdxl_pipeline, sdxl_torch, ["a red circle on grass"], ["blurry, ugly"], 64, 48))


@pytest.mark.slow
def test_empty_negative_prompt_is_zeros_as_in_a1111(sdxl_pipeline, sdxl_torch):
    # diffusers' None (force_zeros_for_empty_prompt) is A1111's "".
    assert_same(*run_both(sdxl_pipeline, sdxl_torch, ["a blue square"], [""], 48, 64, seed=1, ref_negatives=None))
    # diffusers encoding "" is not what A1111 does: the images differ.
    latents, _, ref_latents, _ = run_both(sdxl_pipeline, sdxl_torch, ["a blue square"], [""], 48, 64, seed=1)
    assert np.abs(latents - ref_latents).max() > 1e-3 * np.abs(ref_latents).max()


@pytest.mark.slow
def test_batch_of_two_matches_diffusers(sdxl_pipeline, sdxl_torch):
    prompts, negatives = ["a red circle", "a green triangle in the sky"], ["low quality", "blurry"]
    latents, images, ref_latents, ref_images = run_both(sdxl_pipeline, sdxl_torch, prompts, negatives, 48, 48, 2)
    assert_same(latents, images, ref_latents, ref_images)
    assert np.abs(latents[0] - latents[1]).max() > 1e-2


def test_every_unet_call_sees_diffusers_inputs(sdxl_pipeline, sdxl_torch, monkeypatch):
    calls = []
    run = sdxl_pipeline.backend.run

    def recording_run(component, inputs):
        if component == "unet":
            calls.append({k: np.array(v) for k, v in inputs.items()})
        return run(component, inputs)

    monkeypatch.setattr(sdxl_pipeline.backend, "run", recording_run)
    ref_calls = []

    def hook(_module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        ref_calls.append({
            "sample": args[0].numpy().copy(), "timestep": float(args[1]),
            "encoder_hidden_states": kwargs["encoder_hidden_states"].numpy().copy(),
            "text_embeds": added["text_embeds"].numpy().copy(), "time_ids": added["time_ids"].numpy().copy(),
        })

    handle = sdxl_torch.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run_both(sdxl_pipeline, sdxl_torch, ["a red circle"], [""], 64, 48, seed=3, ref_negatives=None)
    finally:
        handle.remove()
    ref_calls = ref_calls[:STEPS]
    assert len(calls) == len(ref_calls) == STEPS
    for ours, theirs in zip(calls, ref_calls, strict=True):
        # ours: [cond, uncond]; diffusers: [uncond, cond]
        order = [1, 0]
        for key in ("sample", "encoder_hidden_states", "text_embeds", "time_ids"):
            ref = theirs[key][order]
            assert ours[key].shape == ref.shape, key
            np.testing.assert_allclose(ours[key], ref, rtol=0, atol=1e-5 * max(np.abs(ref).max(), 1.0), err_msg=key)
        np.testing.assert_allclose(ours["timestep"], theirs["timestep"], atol=2e-3)
        np.testing.assert_array_equal(ours["time_ids"], [[48, 64, 0, 0, 48, 64]] * 2)
        assert not ours["encoder_hidden_states"][1].any() and not ours["text_embeds"][1].any()  # A1111's zeros
        assert ours["encoder_hidden_states"][0].std() > 0.1 and ours["text_embeds"][0].std() > 0.1


# --- refiner -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refiner_torch():
    from export.sdxl_demo import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(seed=5, refiner=True)


@pytest.fixture(scope="module")
def refiner_pipeline(refiner_torch, tmp_path_factory):
    from engine.pipeline import Pipeline
    from export.onnx_export import export_pipeline

    out = export_pipeline(refiner_torch, tmp_path_factory.mktemp("refiner") / "tiny-refiner", name="tiny-refiner")
    return Pipeline.from_path(out)


def test_refiner_img2img_matches_diffusers(refiner_pipeline, refiner_torch):
    """A refiner img2img pass: bigG-only context, pooled, aesthetic-score time ids (6.0 / 2.5)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    from engine.img2img import prepare_init
    from engine.plan import Img2ImgPlan

    ours = refiner_pipeline
    assert ours.manifest.architecture == "sdxl-refiner" and ours.manifest.text_hidden_size == 0
    w, h = 48, 40
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (h, w, 3), dtype=np.uint8))
    plan = GenerationPlan(
        prompts=("a castle",), negative_prompts=("blurry",), seeds=(0,), subseeds=(0,), width=w, height=h,
        steps=STEPS, cfg_scale=CFG, sampler="Euler", scheduler="automatic",
        img2img=Img2ImgPlan(init_images=(image,), denoising_strength=0.6),
    )
    init_latent = ours._encode(prepare_init(plan.img2img, w, h).images[0][None])
    noise = torch.randn(init_latent.shape, generator=torch.Generator().manual_seed(7))  # diffusers' draw
    result = ours.img2img(plan, initial_noise=noise.numpy())
    sigmas = [float(s) for s in ours.resolve_schedule(plan.schedule).sigmas]
    assert 2 < len(sigmas) - 1 < STEPS  # the strength's tail
    scheduler = EulerDiscreteScheduler.from_config(refiner_torch.scheduler.config, timestep_spacing="linspace")
    ref = StableDiffusionXLImg2ImgPipeline(**{**refiner_torch.components, "scheduler": scheduler},
                                           requires_aesthetics_score=True)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref_latents = ref(prompt="a castle", negative_prompt="blurry", image=torch.from_numpy(init_latent),
                          strength=1.0, sigmas=sigmas, guidance_scale=CFG, output_type="latent",
                          generator=torch.Generator().manual_seed(7)).images.numpy()
    latents = np.stack(result.latents)
    assert np.abs(latents - ref_latents).max() <= LATENT_RTOL * np.abs(ref_latents).max()
    ref_images = (ref.vae.decode(torch.from_numpy(ref_latents) / 0.13025).sample / 2 + 0.5).clamp(0, 1).detach()
    images = decode_latents(ours.backend, ours.manifest, latents)
    assert np.abs(images - ref_images.numpy()).max() <= IMAGE_ATOL


def _recording(pipeline, monkeypatch, log, name):
    run = pipeline.backend.run

    def recording_run(component, inputs):
        log.append((name, component, {k: np.array(v) for k, v in inputs.items()}))
        return run(component, inputs)

    monkeypatch.setattr(pipeline.backend, "run", recording_run)


def uniform_timesteps(steps: int) -> list[int]:
    """A1111's Automatic schedule for Euler: σ(t) at t = linspace(999, 0, steps); the nearest table index."""
    return [round(999 - i * 999 / (steps - 1)) for i in range(steps)]


@pytest.mark.parametrize(("switch_at", "by_steps"), [(0.5, False), (0.2, False), (0.2, True), (None, False)])
def test_refiner_takes_over_at_the_switch_point(sdxl_pipeline, refiner_pipeline, monkeypatch, switch_at, by_steps):
    from engine.plan import RefinerPlan

    log = []
    _recording(sdxl_pipeline, monkeypatch, log, "base")
    _recording(refiner_pipeline, monkeypatch, log, "refiner")
    plan = GenerationPlan(
        prompts=("a red circle",), negative_prompts=("",), seeds=(3,), subseeds=(3,), width=48, height=32,
        steps=STEPS, cfg_scale=CFG, sampler="Euler", scheduler="automatic",
        refiner=RefinerPlan("tiny-refiner", switch_at, by_sample_steps=by_steps),
    )
    result = sdxl_pipeline.txt2img(plan, refiner_pipeline=refiner_pipeline)
    unet_calls = [(name, inputs) for name, component, inputs in log if component == "unet"]
    if switch_at is None:
        expected = 0
    elif by_steps:  # completed = step / total_steps
        expected = next(i for i in range(STEPS) if i / STEPS >= switch_at)
    else:  # completed = (999 − t) / 1000
        expected = next(i for i, t in enumerate(uniform_timesteps(STEPS)) if (999 - t) / 1000 >= switch_at)
    assert [name for name, _ in unet_calls] == ["base"] * expected + ["refiner"] * (STEPS - expected)
    for _, inputs in unet_calls[expected:]:
        assert inputs["encoder_hidden_states"].shape[-1] == 64  # bigG only
        np.testing.assert_array_equal(inputs["time_ids"], [[32, 48, 0, 0, 6.0], [32, 48, 0, 0, 2.5]])
        assert not inputs["text_embeds"][1].any()  # A1111's zeros for the empty negative prompt
    decoders = [name for name, component, _ in log if component == "vae_decoder"]
    assert decoders == ["refiner"]  # the loaded model (the refiner) decodes
    assert len(result.images) == 1 and result.images[0].size == (48, 32)


# --- Turbo and inpainting ------------------------------------------------------------------------------------


def test_turbo_one_step_euler_a_at_cfg_1_matches_diffusers_trailing(sdxl_pipeline, sdxl_torch, monkeypatch):
    """SDXL-Turbo is the SDXL architecture sampled in 1–4 steps without guidance: A1111's Euler a at cfg 1 over
    [σ_max, 0] is diffusers' Euler ancestral with trailing spacing at t = 999, guidance off (one UNet row)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    calls = []
    run = sdxl_pipeline.backend.run
    monkeypatch.setattr(sdxl_pipeline.backend, "run",
                        lambda c, i: (calls.append(i["sample"].shape) if c == "unet" else None) or run(c, i))
    plan = GenerationPlan(prompts=("a cat",), negative_prompts=("",), seeds=(0,), subseeds=(0,), width=48, height=48,
                          steps=1, cfg_scale=1.0, sampler="Euler a", scheduler="automatic")
    noise = np.random.default_rng(9).standard_normal((1, *sdxl_pipeline.latent_shape(48, 48))).astype(np.float32)
    latents = np.stack(sdxl_pipeline.txt2img(plan, initial_noise=noise).latents)
    assert calls == [(1, 4, 24, 24)]  # the unconditional half is skipped
    scheduler = EulerAncestralDiscreteScheduler.from_config(sdxl_torch.scheduler.config, timestep_spacing="trailing")
    ref = StableDiffusionXLPipeline(**{**sdxl_torch.components, "scheduler": scheduler})
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref_latents = ref(prompt="a cat", num_inference_steps=1, guidance_scale=0.0, width=48, height=48,
                          latents=torch.from_numpy(noise), output_type="latent").images.numpy()
    assert np.abs(latents - ref_latents).max() <= LATENT_RTOL * np.abs(ref_latents).max()


def test_sdxl_inpainting_exports_and_runs_the_inpainting_path(tmp_path):
    """The 9-channel SDXL UNet reads [x, mask, masked-image latent] through the engine's inpainting path."""
    from PIL import Image

    from engine.pipeline import Pipeline
    from engine.plan import Img2ImgPlan, MaskPlan
    from export.onnx_export import export_pipeline
    from export.sdxl_demo import build_tiny_sdxl_pipeline

    bundle = export_pipeline(build_tiny_sdxl_pipeline(seed=2, inpainting=True), tmp_path / "tiny-sdxl-inpaint")
    ours = Pipeline.from_path(bundle)
    assert ours.manifest.is_inpainting and ours.manifest.architecture == "sdxl"
    calls = []
    run = ours.backend.run
    ours.backend.run = lambda c, i: (calls.append(i["sample"].shape) if c == "unet" else None) or run(c, i)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 8, 32, 24))
    plan = GenerationPlan(
        prompts=("a dog",), negative_prompts=("",), seeds=(1,), subseeds=(1,), width=48, height=32, steps=4,
        cfg_scale=5.0, sampler="Euler", scheduler="automatic",
        img2img=Img2ImgPlan(init_images=(image,), denoising_strength=0.75,
                            mask=MaskPlan(mask, blur_x=0, blur_y=0, only_masked=False)),
    )
    result = ours.img2img(plan)
    assert calls and all(shape[1] == 9 for shape in calls)
    out = np.asarray(result.images[0]).astype(int)
    # The overlay keeps the unmasked pixels; the masked square was repainted.
    assert np.array_equal(out[:4, :], np.asarray(image)[:4, :])
    assert np.abs(out[10:22, 18:30] - np.asarray(image)[10:22, 18:30]).mean() > 5


@pytest.mark.slow
def test_optimum_sdxl_export_loads_and_renders_like_ours(sdxl_pipeline, sdxl_torch, tmp_path):
    """`optimum-cli export onnx` of the same SDXL folder (scalar timestep, no manifest): the manifest is derived
    from its configs and the image is ours."""
    from optimum.exporters.onnx import main_export

    from engine.pipeline import Pipeline

    sdxl_torch.save_pretrained(tmp_path / "diffusers", safe_serialization=True)
    main_export(str(tmp_path / "diffusers"), output=str(tmp_path / "optimum"), task="text-to-image")
    theirs = Pipeline.from_path(tmp_path / "optimum")
    m = theirs.manifest
    assert (m.architecture, m.source_kind, m.text_pooled_size, m.tokenizer_2.pad_token_id) == ("sdxl", "optimum", 48, 0)
    assert not theirs.unet.per_sample_timestep
    plan = GenerationPlan(prompts=("a (cat:1.2), BREAK on a mat",), negative_prompts=("",), seeds=(4,),
                          subseeds=(4,), width=48, height=40, steps=3, cfg_scale=4.0, sampler="Euler a",
                          scheduler="automatic")
    ours = np.stack(sdxl_pipeline.txt2img(plan).latents)
    other = np.stack(theirs.txt2img(plan).latents)
    assert np.abs(ours - other).max() <= 1e-5 * np.abs(ours).max()

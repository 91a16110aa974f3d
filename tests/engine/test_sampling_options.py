"""A1111's sampling options `sd_noise_schedule` (Zero Terminal SNR), `skip_early_cond`, `img2img_extra_noise` and
`sgm_noise_multiplier` (A1111 modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample,
sample_img2img; modules/sd_models.py; modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward; infotext keys
modules/processing.py: create_infotext)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.plan import GenerationPlan, Img2ImgPlan
from engine.samplers import SamplerSettings
from engine.schedules import ZERO_TERMINAL_SNR, rescale_zero_terminal_snr, scaled_linear_alphas_cumprod
from tests.images import b64, noise_image
from tests.schedules import plan_sigmas

ZTSNR = SamplerSettings(noise_schedule=ZERO_TERMINAL_SNR)
ZTSNR_LAST = 4.8973451890853435e-08  # A1111 modules/sd_models.py: rescale_zero_terminal_snr_abar


def spec_alphas_cumprod() -> np.ndarray:
    """LDM's `make_beta_schedule("linear")`: β_i = (√0.00085 + i·(√0.012 − √0.00085)/999)² in float64, ᾱ =
    cumprod(1 − β) stored as float32."""
    i = np.arange(1000, dtype=np.float64)
    betas = (0.00085**0.5 + i * (0.012**0.5 - 0.00085**0.5) / 999) ** 2
    return np.cumprod(1 - betas).astype(np.float32)


def spec_ztsnr(ac: np.ndarray) -> np.ndarray:
    """A1111 modules/sd_models.py: rescale_zero_terminal_snr_abar in float64: s = √ᾱ, s ← (s −
    s[999])·s[0]/(s[0] − s[999]), ᾱ = s², ᾱ[999] = 4.897…e-8."""
    s = np.sqrt(ac.astype(np.float64))
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])
    out = s**2
    out[-1] = ZTSNR_LAST
    return out


def txt2img_plan(pipeline, sampler="Euler", steps=3, settings=SamplerSettings(), seed=3, **fields) -> GenerationPlan:
    return GenerationPlan(
        prompts=("a red circle",), negative_prompts=("blurry",), seeds=(seed,), subseeds=(seed,), width=64,
        height=64, steps=steps, cfg_scale=7.0, sampler=sampler, scheduler="automatic",
        sampler_settings=settings, **fields,
    )


def img2img_plan(pipeline, image, sampler="Euler", steps=10, strength=0.5, fix_steps=False,
                 settings=SamplerSettings(), seed=5) -> GenerationPlan:
    return GenerationPlan(
        prompts=("a red circle",), negative_prompts=("blurry",), seeds=(seed,), subseeds=(seed,), width=64,
        height=64, steps=steps, cfg_scale=7.0, sampler=sampler, scheduler="automatic",
        sampler_settings=settings, randn_source="CPU",
        img2img=Img2ImgPlan(init_images=(image,), denoising_strength=strength, fix_steps=fix_steps),
    )


@pytest.fixture
def unet_inputs(demo_pipeline, monkeypatch) -> list[dict[str, np.ndarray]]:
    """Every UNet call's inputs (copies), in order."""
    calls: list[dict[str, np.ndarray]] = []
    run = demo_pipeline.backend.run

    def recording(component, inputs):
        if component == "unet":
            calls.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return run(component, inputs)

    monkeypatch.setattr(demo_pipeline.backend, "run", recording)
    return calls


def torch_randn(shape, seed: int) -> np.ndarray:
    """A1111's CPU noise source: torch.randn(shape) from a generator seeded with the image's seed (A1111
    modules/rng.py)."""
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


def torch_init_latent(torch_pipeline, image: Image.Image) -> np.ndarray:
    """diffusers' VAE posterior mean × scaling factor of a [−1, 1] image (what img2img starts from)."""
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0 * 2 - 1)
    with torch.no_grad():
        mean = torch_pipeline.vae.encode(pixels).latent_dist.mean
    return mean.numpy() * torch_pipeline.vae.config.scaling_factor


# ---- sd_noise_schedule = "Zero Terminal SNR" ----------------------------------------------------------------


def test_zero_terminal_snr_alphas_follow_the_spec_and_diffusers():
    import torch
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    ac = spec_alphas_cumprod()
    np.testing.assert_array_equal(scaled_linear_alphas_cumprod(), ac)
    ours = rescale_zero_terminal_snr(ac)
    assert ours.dtype == np.float32
    assert ours[-1] == np.float32(ZTSNR_LAST)
    assert ours[0] == pytest.approx(float(ac[0]), rel=1e-6)  # the first ᾱ is kept
    np.testing.assert_allclose(np.sqrt(ours), np.sqrt(spec_ztsnr(ac)), rtol=0, atol=2e-7)
    # diffusers rescales betas (its last ᾱ is exactly 0, A1111 pins it above zero): the rest must agree.
    ac64 = ac.astype(np.float64)
    betas = torch.from_numpy(1 - ac64 / np.concatenate([[1.0], ac64[:-1]]))
    reference = torch.cumprod(1 - diffusers_rescale(betas), dim=0).numpy()
    assert reference[-1] == 0.0
    np.testing.assert_allclose(np.sqrt(ours[:-1]), np.sqrt(reference[:-1]), rtol=0, atol=2e-7)
    assert np.all(np.diff(ours) < 0)


def test_zero_terminal_snr_sigmas_and_cached_schedules(demo_pipeline):
    sigma_max = float(np.sqrt((1 - np.float32(ZTSNR_LAST)) / np.float32(ZTSNR_LAST)))  # ≈ 4519
    default = demo_pipeline.sigmas("Euler", "automatic", 4)
    uniform = demo_pipeline.sigmas("Euler", "automatic", 4, ZTSNR)
    karras = demo_pipeline.sigmas("Euler", "karras", 4, ZTSNR)
    assert default[0] == pytest.approx(14.614642, rel=1e-6)
    assert uniform[0] == pytest.approx(sigma_max, rel=1e-5) and karras[0] == pytest.approx(sigma_max, rel=1e-5)
    assert karras[-2] == pytest.approx(0.0291675, rel=1e-4)  # σ_min unchanged (ᾱ[0] is kept)
    # Built once per pipeline: the same schedule object (and its σ table) for every job that asks for it.
    first = demo_pipeline.model_schedule(ZTSNR)
    assert demo_pipeline.model_schedule(replace(ZTSNR, eta_ancestral=0.5)) is first
    assert first.sigmas is demo_pipeline.model_schedule(ZTSNR).sigmas
    assert demo_pipeline.model_schedule(SamplerSettings()) is demo_pipeline.schedule
    assert demo_pipeline.model_schedule(SamplerSettings(noise_schedule="Linear")) is demo_pipeline.schedule


def test_zero_terminal_snr_timesteps_reach_the_rescaled_table(demo_pipeline, unet_inputs):
    """k-diffusion feeds the UNet t = σ→t on the rescaled σ table: log-linear interpolation between its
    neighbours (A1111 k_diffusion/external.py: DiscreteSchedule), computed here from the spec's formula in
    float64."""
    plan = txt2img_plan(demo_pipeline, "Euler", 4, ZTSNR)
    noise = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    latents = demo_pipeline.txt2img(plan, initial_noise=noise).latents[0]
    assert np.isfinite(latents).all()
    ac = spec_ztsnr(spec_alphas_cumprod())
    log_sigmas = np.log(np.sqrt((1 - ac) / ac))
    expected_t = np.interp(np.log(plan_sigmas(demo_pipeline, plan)[:-1]), log_sigmas, np.arange(1000))
    seen_t = [float(call["timestep"][0]) for call in unet_inputs]
    np.testing.assert_allclose(seen_t, expected_t, atol=1e-3)
    assert seen_t[0] == pytest.approx(999.0)
    sigma0 = plan_sigmas(demo_pipeline, plan)[0]
    np.testing.assert_allclose(unet_inputs[0]["sample"][0], noise[0] * sigma0 / np.sqrt(sigma0**2 + 1), rtol=1e-5,
                               atol=1e-6)


def test_zero_terminal_snr_ddim_matches_diffusers(demo_pipeline, torch_pipeline, monkeypatch):
    """A1111's DDIM over [1, 101, …, 901] on the rescaled ᾱ against diffusers' DDIM with
    `rescale_betas_zero_snr` after the same 9 steps (the grid never reaches t = 999, where the two differ)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    import engine.pipeline

    steps = 10
    plan = txt2img_plan(demo_pipeline, "DDIM", steps, ZTSNR)
    noise = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
    monkeypatch.setattr(engine.pipeline, "noise_sampler_for", lambda *a: lambda *_: np.zeros_like(noise))
    ours = demo_pipeline.txt2img(plan, initial_noise=noise).latents[0]
    default = demo_pipeline.txt2img(replace(plan, sampler_settings=SamplerSettings()), initial_noise=noise).latents[0]

    scheduler = DDIMScheduler.from_config(torch_pipeline.scheduler.config, clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=1, timestep_spacing="leading", rescale_betas_zero_snr=True)
    pipe = StableDiffusionPipeline(**{**torch_pipeline.components, "scheduler": scheduler},
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    captured = {}

    def on_step_end(_pipe, i, _t, tensors):
        if i == steps - 2:
            captured["latents"] = tensors["latents"].numpy().copy()
        return tensors

    with torch.no_grad():
        pipe(prompt="a red circle", negative_prompt="blurry", width=64, height=64, guidance_scale=7.0,
             latents=torch.from_numpy(noise), output_type="latent", num_inference_steps=steps,
             callback_on_step_end=on_step_end)
    reference = captured["latents"][0]
    scale = np.abs(reference).max()
    assert np.abs(ours - reference).max() <= 1e-5 * scale  # measured 1.6e-6
    assert np.abs(default - reference).max() > 1e-2 * scale  # the rescaled ᾱ matter


# ---- skip_early_cond ----------------------------------------------------------------------------------------


def expected_rows(calls: int, total_steps: int, value: float) -> list[int]:
    """A1111 modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward: the uncond rows are dropped (cfg 1)
    while call k satisfies k / total_steps ≤ skip_early_cond."""
    return [1 if value != 0 and k / total_steps <= value else 2 for k in range(calls)]


@pytest.mark.parametrize("sampler,steps,value,calls,total", [
    ("Euler", 6, 0.5, 6, 6),
    ("Euler", 4, 0.0, 4, 4),
    ("Euler", 3, 1.0, 3, 3),
    ("Heun", 4, 0.3, 7, 8),  # second order: 2 calls a step but the last (to σ = 0); A1111 counts 2·steps
    ("DPM2", 3, 0.4, 5, 6),
    ("DDIM", 4, 0.25, 3, 4),  # DDIM stops one grid point early (3 calls) but A1111 counts steps
])
def test_skip_early_cond_drops_the_uncond_rows(demo_pipeline, unet_inputs, sampler, steps, value, calls, total):
    plan = txt2img_plan(demo_pipeline, sampler, steps, SamplerSettings(skip_early_cond=value))
    demo_pipeline.txt2img(plan)
    rows = [call["sample"].shape[0] for call in unet_inputs]
    assert len(rows) == calls
    assert rows == expected_rows(calls, total, value)


@pytest.mark.parametrize("steps,strength,fix_steps,calls", [(10, 0.5, False, 6), (4, 0.5, True, 4)])
def test_skip_early_cond_in_img2img_counts_t_enc_plus_one(demo_pipeline, unet_inputs, steps, strength, fix_steps,
                                                          calls):
    # A1111 launches img2img with t_enc + 1 steps (A1111 modules/sd_samplers_common.py: setup_img2img_steps):
    # int(0.5·10) + 1 = 6, or steps with fixed steps.
    plan = img2img_plan(demo_pipeline, noise_image(64, 64, 1), "Euler", steps, strength, fix_steps,
                        SamplerSettings(skip_early_cond=0.5))
    demo_pipeline.img2img(plan)
    rows = [call["sample"].shape[0] for call in unet_inputs]
    assert rows == expected_rows(calls, calls, 0.5)


def test_skip_early_cond_restarts_in_the_hires_pass(demo_pipeline, unet_inputs):
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.a1111.translate import plan_txt2img
    from service.runtime.options import DEFAULTS

    req = Txt2ImgRequest(prompt="a red circle", negative_prompt="blurry", seed=2, steps=2, width=64, height=64,
                         sampler_name="Euler", enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
                         denoising_strength=0.5)
    plan = plan_txt2img(req, {**DEFAULTS, "skip_early_cond": 0.5})
    assert plan.sampler_settings.skip_early_cond == 0.5
    demo_pipeline.txt2img(plan)
    rows = [call["sample"].shape[0] for call in unet_inputs]
    assert rows == expected_rows(2, 2, 0.5) + expected_rows(4, 4, 0.5)


def test_skipped_steps_are_the_conditional_prediction(demo_pipeline, unet_inputs):
    """With every step skipped, the result is sampling with cfg 1 (D = D_cond)."""
    skipped = demo_pipeline.txt2img(txt2img_plan(demo_pipeline, "Euler", 3, SamplerSettings(skip_early_cond=1.0)))
    cfg_one = demo_pipeline.txt2img(replace(txt2img_plan(demo_pipeline, "Euler", 3), cfg_scale=1.0))
    np.testing.assert_array_equal(skipped.latents[0], cfg_one.latents[0])


# ---- img2img_extra_noise ------------------------------------------------------------------------------------


def test_extra_noise_k_diffusion_img2img_start(demo_pipeline, torch_pipeline, unet_inputs):
    """x_start = init + noise·σ₀ + noise·e (A1111 modules/sd_samplers_kdiffusion.py:
    KDiffusionSampler.sample_img2img); the UNet sees x_start/√(σ₀² + 1)."""
    image, seed, e = noise_image(64, 64, 2), 5, 0.3
    plan = img2img_plan(demo_pipeline, image, "Euler", 10, 0.5, settings=SamplerSettings(img2img_extra_noise=e),
                        seed=seed)
    demo_pipeline.img2img(plan)
    noise = torch_randn((4, 8, 8), seed)
    init = torch_init_latent(torch_pipeline, image)[0]
    sigma0 = np.float32(plan_sigmas(demo_pipeline, plan)[0])
    expected = (init + noise * sigma0 + noise * e) / np.sqrt(sigma0**2 + 1)
    np.testing.assert_allclose(unet_inputs[0]["sample"][0], expected, atol=5e-5)
    without = np.asarray(unet_inputs[0]["sample"][0])
    unet_inputs.clear()
    demo_pipeline.img2img(replace(plan, sampler_settings=SamplerSettings()))
    np.testing.assert_allclose(without - unet_inputs[0]["sample"][0], noise * e / np.sqrt(sigma0**2 + 1), atol=1e-6)


def test_extra_noise_timestep_sampler_img2img_start(demo_pipeline, torch_pipeline, unet_inputs):
    """DDIM: x_start = √ᾱ·init + √(1 − ᾱ)·noise + noise·e·√ᾱ at ᾱ[T[t_enc]] (A1111
    modules/sd_samplers_timesteps.py: CompVisSampler.sample_img2img); the UNet sees x unscaled."""
    image, seed, e, steps, strength = noise_image(64, 64, 3), 6, 0.25, 10, 0.5
    plan = img2img_plan(demo_pipeline, image, "DDIM", steps, strength, settings=SamplerSettings(img2img_extra_noise=e),
                        seed=seed)
    demo_pipeline.img2img(plan)
    grid = np.arange(0, 1000, 1000 // steps) + 1  # A1111's DDIM timesteps (A1111 modules/sd_samplers_timesteps_impl.py: ddim)
    t_enc = int(strength * steps)
    a = spec_alphas_cumprod()[grid[t_enc]]
    noise = torch_randn((4, 8, 8), seed)
    init = torch_init_latent(torch_pipeline, image)[0]
    expected = np.sqrt(a) * init + np.sqrt(1 - a) * noise + noise * e * np.sqrt(a)
    assert float(unet_inputs[0]["timestep"][0]) == grid[t_enc - 1]
    np.testing.assert_allclose(unet_inputs[0]["sample"][0], expected, atol=5e-5)


def test_extra_noise_applies_to_the_hires_pass(demo_pipeline, unet_inputs):
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.a1111.translate import plan_txt2img
    from service.runtime.options import DEFAULTS

    seed, e = 4, 0.2
    req = Txt2ImgRequest(prompt="a red circle", seed=seed, steps=2, width=64, height=64, sampler_name="Euler",
                         enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5)
    options = {**DEFAULTS, "randn_source": "CPU"}
    plain = plan_txt2img(req, options)
    extra = plan_txt2img(req, {**options, "img2img_extra_noise": e})
    assert extra.sampler_settings.img2img_extra_noise == e
    demo_pipeline.txt2img(plain)
    first = [np.asarray(c["sample"]) for c in unet_inputs]
    unet_inputs.clear()
    demo_pipeline.txt2img(extra)
    second = [np.asarray(c["sample"]) for c in unet_inputs]
    np.testing.assert_array_equal(second[0], first[0])  # txt2img's own start has no extra noise
    np.testing.assert_array_equal(second[1], first[1])
    sigma0 = np.float32(plan_sigmas(demo_pipeline, extra, hires=True)[0])
    hires_noise = torch_randn((4, 12, 12), seed)  # the hires pass's noise: a fresh generator of the seed
    np.testing.assert_allclose(second[2][0] - first[2][0], hires_noise * e / np.sqrt(sigma0**2 + 1), atol=1e-5)


def test_extra_noise_stays_when_nothing_is_denoised(demo_pipeline, unet_inputs):
    """Fixed steps at strength 0 walk an empty schedule: A1111's sampler hands back init + noise·0 + noise·e."""
    image, seed, e = noise_image(64, 64, 4), 7, 0.5
    plan = img2img_plan(demo_pipeline, image, "Euler", 4, 0.0, fix_steps=True,
                        settings=SamplerSettings(img2img_extra_noise=e), seed=seed)
    assert plan_sigmas(demo_pipeline, plan) == (0.0,)
    plain = demo_pipeline.img2img(replace(plan, sampler_settings=SamplerSettings())).latents[0]
    noisy = demo_pipeline.img2img(plan).latents[0]
    assert unet_inputs == []
    np.testing.assert_allclose(noisy - plain, torch_randn((4, 8, 8), seed) * e, atol=1e-6)


# ---- sgm_noise_multiplier -----------------------------------------------------------------------------------


def test_sgm_noise_multiplier_scales_the_txt2img_start(demo_pipeline, unet_inputs):
    """k-diffusion txt2img starts at noise·√(1 + σ₀²) (A1111 modules/sd_samplers_kdiffusion.py:
    KDiffusionSampler.sample), so the UNet's first input x·c_in is the noise."""
    noise = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    plan = txt2img_plan(demo_pipeline, "Euler", 3, SamplerSettings(sgm_noise_multiplier=True))
    demo_pipeline.txt2img(plan, initial_noise=noise)
    np.testing.assert_allclose(unet_inputs[0]["sample"][0], noise[0], rtol=1e-6, atol=1e-6)
    unet_inputs.clear()
    demo_pipeline.txt2img(replace(plan, sampler_settings=SamplerSettings()), initial_noise=noise)
    sigma0 = plan_sigmas(demo_pipeline, plan)[0]
    np.testing.assert_allclose(unet_inputs[0]["sample"][0], noise[0] * sigma0 / np.sqrt(sigma0**2 + 1), rtol=1e-6)


@pytest.mark.parametrize("mode", ["DDIM txt2img", "Euler img2img"])
def test_sgm_noise_multiplier_leaves_timestep_samplers_and_img2img_alone(demo_pipeline, unet_inputs, mode):
    sgm = SamplerSettings(sgm_noise_multiplier=True)
    if mode == "DDIM txt2img":
        plan = txt2img_plan(demo_pipeline, "DDIM", 3, sgm)
        run = demo_pipeline.txt2img
    else:
        plan = img2img_plan(demo_pipeline, noise_image(64, 64, 5), "Euler", 4, 0.5, settings=sgm)
        run = demo_pipeline.img2img
    with_sgm = run(plan).latents[0]
    without = run(replace(plan, sampler_settings=SamplerSettings())).latents[0]
    np.testing.assert_array_equal(with_sgm, without)


# ---- options and infotext through the REST API ----------------------------------------------------------------


def test_sampler_settings_read_the_options():
    from service.a1111.sampler_names import sampler_settings
    from service.runtime.options import DEFAULTS

    assert {k: DEFAULTS[k] for k in ("skip_early_cond", "img2img_extra_noise", "sgm_noise_multiplier",
                                     "sd_noise_schedule")} == {
        "skip_early_cond": 0.0, "img2img_extra_noise": 0.0, "sgm_noise_multiplier": False,
        "sd_noise_schedule": "Default"}
    settings = sampler_settings({**DEFAULTS, "skip_early_cond": 0.2, "img2img_extra_noise": 0.1,
                                 "sgm_noise_multiplier": True, "sd_noise_schedule": ZERO_TERMINAL_SNR})
    assert (settings.skip_early_cond, settings.img2img_extra_noise, settings.sgm_noise_multiplier,
            settings.noise_schedule) == (0.2, 0.1, True, ZERO_TERMINAL_SNR)
    assert sampler_settings(DEFAULTS) == SamplerSettings()


OVERRIDES = {"skip_early_cond": 0.25, "sgm_noise_multiplier": True, "sd_noise_schedule": "Zero Terminal SNR",
             "img2img_extra_noise": 0.1}


def infotext_of(response) -> dict:
    from service.a1111.infotext import parse_infotext

    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.info["parameters"] == text
    return parse_infotext(text)


@pytest.mark.slow
def test_infotext_keys_through_rest(api):
    small = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
    plain = infotext_of(api.post("/sdapi/v1/txt2img", json=small))
    for key in ("Skip Early CFG", "SGM noise multiplier", "Noise Schedule", "Extra noise"):
        assert key not in plain

    txt2img = infotext_of(api.post("/sdapi/v1/txt2img", json={**small, "override_settings": OVERRIDES}))
    assert txt2img["Skip Early CFG"] == "0.25"
    assert txt2img["SGM noise multiplier"] == "True"
    assert txt2img["Noise Schedule"] == "Zero Terminal SNR"
    assert "Extra noise" not in txt2img  # no img2img start without hires

    hires = infotext_of(api.post("/sdapi/v1/txt2img", json={**small, "override_settings": OVERRIDES,
                                                            "enable_hr": True, "denoising_strength": 0.5}))
    assert hires["Extra noise"] == "0.1"

    img2img_body = {**small, "init_images": [b64(noise_image(64, 64, 6))], "denoising_strength": 0.5,
                    "override_settings": OVERRIDES}
    img2img = infotext_of(api.post("/sdapi/v1/img2img", json=img2img_body))
    assert img2img["Extra noise"] == "0.1" and img2img["Skip Early CFG"] == "0.25"
    assert img2img["Noise Schedule"] == "Zero Terminal SNR"
    assert "SGM noise multiplier" not in img2img  # only txt2img's first pass scales its noise

    ddim = infotext_of(api.post("/sdapi/v1/txt2img", json={**small, "sampler_name": "DDIM",
                                                           "override_settings": OVERRIDES}))
    assert "SGM noise multiplier" not in ddim


def test_options_round_trip_and_bad_values_get_4xx(api):
    options = api.get("/sdapi/v1/options").json()
    assert options["sd_noise_schedule"] == "Default" and options["skip_early_cond"] == 0.0
    assert options["img2img_extra_noise"] == 0.0 and options["sgm_noise_multiplier"] is False
    bad = api.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64,
                                              "override_settings": {"sd_noise_schedule": "Linear"}})
    assert 400 <= bad.status_code < 500, bad.text
    assert api.post("/sdapi/v1/options", json={"skip_early_cond": "lots"}).status_code // 100 == 4
    try:
        assert api.post("/sdapi/v1/options", json={"sd_noise_schedule": "Zero Terminal SNR"}).status_code == 200
        assert api.get("/sdapi/v1/options").json()["sd_noise_schedule"] == "Zero Terminal SNR"
        r = api.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64})
        assert infotext_of(r)["Noise Schedule"] == "Zero Terminal SNR"
    finally:
        api.post("/sdapi/v1/options", json={"sd_noise_schedule": "Default"})

"""Samplers against A1111's numbers: toy-model vectors computed with k-diffusion's sampling.py
(float64, 1e-9), and the
demo model end to end against diffusers' schedulers driven with the same noise."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from engine import samplers as S
from engine import timestep_samplers as T
from engine.plan import GenerationPlan
from engine.samplers import SAMPLERS, SamplerSettings
from engine.schedules import SCHEDULERS, get_sigmas_karras, scaled_linear_alphas_cumprod
from tests.schedules import plan_sigmas

# ---- the toy model those vectors were computed on ----

AC = scaled_linear_alphas_cumprod()
SIGMA_MIN, SIGMA_MAX = 0.029167532920837402, 14.614642143249512  # float32 model extremes
KARRAS_10 = get_sigmas_karras(10, SIGMA_MIN, SIGMA_MAX)
X0 = np.array([1.0, -0.5, 0.25, 2.0])


class Toy:
    """D(x, σ) = x/(1+σ²) + 0.1·tanh(x)/(1+σ); ε(x, t) = x·√(1 − ᾱ[⌊t⌋]) + 0.1·tanh(x); call-indexed noise."""

    alphas_cumprod = AC

    def __init__(self):
        self.calls: list[float] = []
        self.draws = 0

    def __call__(self, x, sigma):
        self.calls.append(sigma)
        return x / (1 + sigma**2) + 0.1 * np.tanh(x) / (1 + sigma)

    def eps(self, x, t):
        self.calls.append(t)
        return x * math.sqrt(1 - float(AC[int(t)])) + 0.1 * np.tanh(x)

    def eps_and_uncond(self, x, t, cfg_scale_multiplier):
        eps = self.eps(x, t)
        return eps, eps

    def noise(self, *_):
        k, self.draws = self.draws, self.draws + 1
        return 1.5 * np.sin(12.9898 * (k + 1) + 78.233 * (np.arange(4) + 1))


def test_toy_schedule_is_the_spec_karras_schedule():
    expected = [14.61464214, 9.102934397, 5.478399697, 3.168610184, 1.749422698, 0.9140762916, 0.4469208169,
                0.2013998322, 0.08191104673, 0.02916753292, 0]
    np.testing.assert_allclose(KARRAS_10, expected, rtol=1e-9)


K_VECTORS = [
    # (label, function, options, expected, calls, draws)
    ("Euler", S.sample_euler, {}, [1.06283619089, -0.563033887914, 0.289941807296, 1.95841409073], 10, 10),
    ("Euler s_churn=1", S.sample_euler, {"s_churn": 1.0},
     [-1.57020532962, 1.67906247851, -1.49558306788, 2.18956638153], 10, 10),
    ("Euler a", S.sample_euler_ancestral, {}, [-2.33438583553, 2.33767662321, -2.12607522203, 1.87577298191], 10, 9),
    ("Heun", S.sample_heun, {}, [1.43989121252, -0.793770954009, 0.416347058639, 2.55100343101], 19, None),
    ("DPM2", S.sample_dpm_2, {}, [1.37689730354, -0.752133171785, 0.392596393509, 2.46148714655], 19, None),
    ("DPM2 a", S.sample_dpm_2_ancestral, {}, [-3.87702863959, 3.68093417681, -3.14439768463, 2.70151677912], 19, 9),
    ("LMS", S.sample_lms, {}, [1.23842228982, -0.666033846886, 0.344864583464, 2.24377447027], 10, None),
    ("DPM++ 2S a", S.sample_dpmpp_2s_ancestral, {},
     [-3.00554326617, 2.92033364881, -2.56440055018, 2.22614352873], 19, 9),
    ("DPM++ 2M", S.sample_dpmpp_2m, {}, [1.35803605523, -0.732850933233, 0.379993671916, 2.46067468458], 10, None),
    ("DPM++ SDE", S.sample_dpmpp_sde, {}, [1.40595930636, -0.968816616825, 0.409647738316, 0.416884447083], 19, 18),
    ("DPM++ 2M SDE", S.sample_dpmpp_2m_sde, {},
     [-3.45246428221, 3.55107426813, -3.34035537423, 2.98970591731], 10, 9),
    ("DPM++ 2M SDE Heun", SAMPLERS["DPM++ 2M SDE Heun"].function, {},
     [-3.95263037349, 4.09425652259, -3.88308539048, 3.48622018827], 10, 9),
    ("DPM++ 3M SDE", S.sample_dpmpp_3m_sde, {},
     [-3.68658438624, 3.97070963877, -3.92201834101, 3.70137965451], 10, 9),
    ("DPM fast η=1", S.sample_dpm_fast, {"eta": 1.0, "n": 10},
     [-0.298803022885, -0.382806820228, 1.10643944692, -0.619417547791], 10, 4),
    ("DPM fast η=0", S.sample_dpm_fast, {"eta": 0.0, "n": 10},
     [1.19820368732, -0.633084216992, 0.325895182048, 2.23535561838], 10, 4),
    ("DPM adaptive η=0", S.sample_dpm_adaptive, {"eta": 0.0},
     [1.32166886484, -0.713945736959, 0.37161939017, 2.39393741723], 18, 6),
    ("DPM adaptive η=1", S.sample_dpm_adaptive, {"eta": 1.0},
     [-2.87845969166, 3.21279273922, -3.24950349048, 3.30584628209], 39, 10),
    ("LCM", S.sample_lcm, {}, [-1.81156418205, 1.99331511991, -2.01687650941, 1.87508345696], 10, 9),
]


@pytest.mark.parametrize("label,function,options,expected,calls,draws", K_VECTORS, ids=[v[0] for v in K_VECTORS])
def test_k_diffusion_sampler_matches_toy_vector(label, function, options, expected, calls, draws):
    model = Toy()
    x = function(model, X0 * KARRAS_10[0], KARRAS_10, noise_sampler=model.noise, **options)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, expected, rtol=1e-9, atol=0)
    assert len(model.calls) == calls
    if draws is not None:
        assert model.draws == draws


def test_restart_matches_toy_vector():
    """Karras 20 steps: replaced by Karras(11) plus one 10-step restart segment at σ ≈ 0.1 (A1111
    modules/sd_samplers_extra.py: restart_sampler)."""
    sigmas = get_sigmas_karras(20, SIGMA_MIN, SIGMA_MAX)
    model = Toy()
    x = S.sample_restart(model, X0 * sigmas[0], sigmas, noise_sampler=model.noise)
    np.testing.assert_allclose(x, [0.531384743342, -0.77713005103, 1.11087684215, -0.0518026977289], rtol=1e-9)
    assert (len(model.calls), model.draws) == (39, 1)


def test_restart_from_36_steps_restarts_twice():
    sigmas = get_sigmas_karras(40, SIGMA_MIN, SIGMA_MAX)  # K = 40 // 4 = 10, R = 2 → Karras(20) + 2 × 10 steps
    model = Toy()
    S.sample_restart(model, X0 * sigmas[0], sigmas, noise_sampler=model.noise)
    heun_steps = 20 + 2 * 10
    assert model.draws == 2
    assert len(model.calls) == 2 * heun_steps - 1  # Euler for the last step to σ = 0


def test_short_restart_uses_the_schedule_as_given():
    model = Toy()
    x = S.sample_restart(model, X0 * KARRAS_10[0], KARRAS_10, noise_sampler=model.noise)
    heun = S.sample_heun(Toy(), X0 * KARRAS_10[0], KARRAS_10)
    np.testing.assert_allclose(x, heun, rtol=1e-14)
    assert model.draws == 0


T_VECTORS = [
    ("DDIM η=0", T.ddim, {"eta": 0.0}, [0.716830081662, -0.342090573107, 0.168613188408, 1.57639967295], 19, 19),
    ("DDIM η=1", T.ddim, {"eta": 1.0}, [0.387064169309, -0.473296667905, 0.534269951978, -0.423632856518], 19, 19),
    ("PLMS", T.plms, {}, [0.780807182467, -0.374002747779, 0.184550234062, 1.70300680291], 20, 0),
    ("UniPC", T.unipc, {}, [0.754734602107, -0.360148175006, 0.177526731745, 1.66109501175], 20, 0),
]


@pytest.mark.parametrize("label,function,options,expected,calls,draws", T_VECTORS, ids=[v[0] for v in T_VECTORS])
def test_timestep_sampler_matches_toy_vector(label, function, options, expected, calls, draws):
    model = Toy()
    x = function(model, X0.copy(), T.ddim_timesteps(20), noise_sampler=model.noise, **options)
    np.testing.assert_allclose(x, expected, rtol=1e-9, atol=0)
    assert (len(model.calls), model.draws) == (calls, draws)


def test_timestep_samplers_call_the_model_where_a1111_does():
    """DDIM: t = 951 … 51; PLMS: 951, 901, 901, 851, …; UniPC: τ = 999, 949.05, …, 49.95 (A1111
    modules/sd_samplers_timesteps_impl.py: ddim; modules/models/diffusion/uni_pc/uni_pc.py)."""
    grid = T.ddim_timesteps(20)
    ddim, plms, unipc = Toy(), Toy(), Toy()
    T.ddim(ddim, X0.copy(), grid, noise_sampler=ddim.noise)
    T.plms(plms, X0.copy(), grid)
    T.unipc(unipc, X0.copy(), grid)
    assert ddim.calls == list(range(951, 0, -50))[:19]
    assert plms.calls[:4] == [951, 901, 901, 851] and plms.calls[-1] == 51
    np.testing.assert_allclose(unipc.calls, 999 - 49.95 * np.arange(20), atol=1e-9)


def test_ddim_cfgpp_guides_with_a_twelfth_and_steps_along_the_unconditional_eps():
    """A1111 modules/sd_samplers_timesteps_impl.py: ddim_cfgpp on a toy with distinct cond/uncond predictions,
    written out step by step."""

    class Guided(Toy):
        def __init__(self):
            super().__init__()
            self.multipliers = []

        def eps_and_uncond(self, x, t, cfg_scale_multiplier):
            self.multipliers.append(cfg_scale_multiplier)
            uncond = 0.5 * x
            cond = self.eps(x, t)
            return uncond + 7.0 * cfg_scale_multiplier * (cond - uncond), uncond

    grid = T.ddim_timesteps(5)
    model = Guided()
    x = T.ddim_cfgpp(model, X0.copy(), grid, noise_sampler=model.noise)
    assert model.multipliers == [1 / 12.5] * 4

    ref = X0.copy()
    for k in range(len(grid) - 1, 0, -1):
        a, a_prev = float(AC[grid[k]]), float(AC[grid[k - 1]])
        uncond = 0.5 * ref
        guided = uncond + 7.0 / 12.5 * (Toy().eps(ref, grid[k]) - uncond)
        x0 = (ref - np.float32(math.sqrt(1 - np.float32(a))) * guided) / math.sqrt(a)
        ref = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * uncond
    np.testing.assert_allclose(x, ref, rtol=1e-6)


@pytest.mark.parametrize("variant", ["bh2", "vary_coeff"])
def test_unipc_variants_converge_to_the_same_solution(variant):
    """All UniPC variants solve the same ODE: they differ, and the difference shrinks as steps grow."""

    def gap(steps: int) -> float:
        grid = T.ddim_timesteps(steps)
        return float(np.abs(T.unipc(Toy(), X0.copy(), grid, variant=variant) - T.unipc(Toy(), X0.copy(), grid)).max())

    assert gap(20) > 1e-3
    assert gap(200) < gap(50) / 3 < gap(20) / 3


@pytest.mark.parametrize("skip_type", ["time_quadratic", "logSNR"])
def test_unipc_skip_types_converge(skip_type):
    many = T.ddim_timesteps(200)
    ref = T.unipc(Toy(), X0.copy(), many)
    np.testing.assert_allclose(T.unipc(Toy(), X0.copy(), many, skip_type=skip_type), ref, rtol=1e-3)


def test_unipc_orders_and_lower_order_final():
    grid = T.ddim_timesteps(20)
    spec = [0.754734602107, -0.360148175006, 0.177526731745, 1.66109501175]
    for order in (1, 2):
        x = T.unipc(Toy(), X0.copy(), grid, order=order)
        assert np.abs(x - spec).max() > 1e-6  # the order is used …
        np.testing.assert_allclose(x, spec, rtol=0.05)  # … and still solves the same problem
    # Fewer steps than the order: capped (A1111 would fail an assertion).
    assert np.isfinite(T.unipc(Toy(), X0.copy(), T.ddim_timesteps(2))).all()


def test_lms_coefficients_match_scipy_quad():
    """A1111 integrates the Lagrange basis with scipy's quad; Gauss–Legendre must give the same numbers."""
    from scipy import integrate

    t = np.asarray(KARRAS_10, dtype=np.float64)
    for i in range(len(t) - 1):
        order = min(i + 1, 4)
        for j in range(order):
            def basis(tau, i=i, j=j, order=order):
                return math.prod((tau - t[i - k]) / (t[i - j] - t[i - k]) for k in range(order) if k != j)

            expected = integrate.quad(basis, t[i], t[i + 1], epsrel=1e-12)[0]
            assert S.linear_multistep_coeff(order, t, i, j) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_float32_stays_float32(name):
    spec, model = SAMPLERS[name], Toy()
    walk = T.ddim_timesteps(10) if spec.kind == S.TIMESTEPS else KARRAS_10.astype(np.float32)
    x = spec.function(model, (X0 * walk[0] if spec.kind == S.KDIFFUSION else X0).astype(np.float32), walk,
                      noise_sampler=lambda *_: model.noise().astype(np.float32))
    assert x.dtype == np.float32 and np.isfinite(x).all()


def test_dpm_fast_and_adaptive_default_to_the_schedule_range():
    """Without σ_min/σ_max (img2img) they span σ_0 … σ_−2 of the given schedule, DPM fast in len − 1 calls."""
    tail = KARRAS_10[4:]
    model = Toy()
    x = S.sample_dpm_fast(model, X0 * tail[0], tail, noise_sampler=model.noise)
    assert len(model.calls) == len(tail) - 1
    ref = S.sample_dpm_fast(Toy(), X0 * tail[0], KARRAS_10, noise_sampler=Toy().noise,
                            sigma_min=float(tail[-2]), sigma_max=float(tail[0]), n=len(tail) - 1)
    np.testing.assert_allclose(x, ref, rtol=1e-14)
    assert model.calls[0] == pytest.approx(tail[0])
    assert all(tail[-2] < sigma <= tail[0] * (1 + 1e-12) for sigma in model.calls)


def test_stochastic_samplers_require_a_noise_sampler():
    with pytest.raises(ValueError, match="noise_sampler"):
        S.sample_euler_ancestral(Toy(), X0 * KARRAS_10[0], KARRAS_10)
    S.sample_euler(Toy(), X0 * KARRAS_10[0], KARRAS_10)  # the unused churn draw is not required


# ---- the demo model, end to end ----


def make_plan(pipeline, sampler, scheduler, steps, seed=3, **fields) -> GenerationPlan:
    return GenerationPlan(
        prompts=("a red circle",), negative_prompts=("blurry",), seeds=(seed,), subseeds=(seed,), width=64,
        height=64, steps=steps, cfg_scale=7.0, sampler=sampler, scheduler=scheduler, **fields,
    )


class FixedNoise:
    """The same per-step noise (a batch of one) for the engine and for diffusers."""

    def __init__(self, shape, count, seed=0):
        self.draws = list(np.random.default_rng(seed).standard_normal((count, 1, *shape)).astype(np.float32))
        self.used = 0

    def __call__(self, *_):
        self.used += 1
        return self.draws[self.used - 1]


def run_engine(pipeline, plan, noise, step_noise, monkeypatch):
    import engine.pipeline

    monkeypatch.setattr(engine.pipeline, "noise_sampler_for", lambda *a: step_noise)
    return np.stack(pipeline.txt2img(plan, initial_noise=noise[None]).latents)


def diffusers_pipe(torch_pipeline, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**{**torch_pipeline.components, "scheduler": scheduler},
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, latents, steps, stop_after=None, **kwargs):
    import torch

    captured = {}

    def on_step_end(_pipe, i, _t, tensors):
        if stop_after is not None and i == stop_after - 1:
            captured["latents"] = tensors["latents"].numpy().copy()
        return tensors

    with torch.no_grad():
        out = pipe(prompt="a red circle", negative_prompt="blurry", width=64, height=64, guidance_scale=7.0,
                   latents=torch.from_numpy(latents), output_type="latent", num_inference_steps=steps,
                   callback_on_step_end=on_step_end, **kwargs).images.numpy()
    return captured.get("latents", out)


def assert_latents_match(latents, ref):
    scale = np.abs(ref).max()
    assert scale > 0.5  # a real latent, not a collapsed one
    assert np.abs(latents - ref).max() <= 1e-5 * scale  # measured: 3e-5 … 8e-5 absolute at scale 26 … 48


def with_sigmas(scheduler_cls, sigmas, schedule):
    """A diffusers scheduler walking our σ schedule with A1111's continuous timesteps (t = sigma_to_t(σ))."""
    import torch

    class Driven(scheduler_cls):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(num_inference_steps, device)
            self.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
            self.timesteps = torch.from_numpy(schedule.sigma_to_t(sigmas[:-1]).astype(np.float32))
            self.num_inference_steps = len(sigmas) - 1

    return Driven


def test_euler_ancestral_matches_diffusers(demo_pipeline, torch_pipeline, monkeypatch):
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as module

    steps = 8
    plan = make_plan(demo_pipeline, "Euler a", "automatic", steps)
    shape = demo_pipeline.latent_shape(64, 64)
    noise = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    latents = run_engine(demo_pipeline, plan, noise, engine_noise := FixedNoise(shape, steps), monkeypatch)
    assert engine_noise.used == steps - 1  # no noise is added on the step to σ = 0

    import torch

    ref_noise = FixedNoise(shape, steps)
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: torch.from_numpy(ref_noise()))
    cls = with_sigmas(EulerAncestralDiscreteScheduler, np.asarray(plan_sigmas(demo_pipeline, plan)), demo_pipeline.schedule)
    scheduler = cls.from_config(torch_pipeline.scheduler.config, timestep_spacing="linspace")
    ref = run_diffusers(diffusers_pipe(torch_pipeline, scheduler), noise[None], steps)
    assert_latents_match(latents, ref)


def test_euler_karras_matches_diffusers(demo_pipeline, torch_pipeline, monkeypatch):
    from diffusers import EulerDiscreteScheduler

    steps = 8
    plan = make_plan(demo_pipeline, "Euler", "karras", steps)
    noise = np.random.default_rng(2).standard_normal(demo_pipeline.latent_shape(64, 64)).astype(np.float32)
    latents = run_engine(demo_pipeline, plan, noise, FixedNoise(noise.shape, steps), monkeypatch)
    scheduler = EulerDiscreteScheduler.from_config(torch_pipeline.scheduler.config, timestep_spacing="linspace")
    ref = run_diffusers(diffusers_pipe(torch_pipeline, scheduler), noise[None], None, sigmas=list(plan_sigmas(demo_pipeline, plan)))
    assert_latents_match(latents, ref)


def test_dpmpp_2m_karras_matches_diffusers(demo_pipeline, torch_pipeline, monkeypatch):
    """diffusers' DPM-Solver++(2M) works on x/√(σ²+1) and rounds its Karras timesteps: given A1111's sigmas
    and continuous timesteps, and started at the same point, it must give the same latents."""
    from diffusers import DPMSolverMultistepScheduler

    steps = 8
    plan = make_plan(demo_pipeline, "DPM++ 2M", "automatic", steps)
    sigmas = np.asarray(plan_sigmas(demo_pipeline, plan))
    np.testing.assert_allclose(sigmas, demo_pipeline.sigmas("Euler", "karras", steps))  # Automatic → Karras
    noise = np.random.default_rng(3).standard_normal(demo_pipeline.latent_shape(64, 64)).astype(np.float32)
    latents = run_engine(demo_pipeline, plan, noise, FixedNoise(noise.shape, steps), monkeypatch)
    cls = with_sigmas(DPMSolverMultistepScheduler, sigmas, demo_pipeline.schedule)
    scheduler = cls.from_config(
        torch_pipeline.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        use_karras_sigmas=True, final_sigmas_type="zero", lower_order_final=True, euler_at_final=False,
    )
    start = noise[None] * sigmas[0] / math.sqrt(sigmas[0] ** 2 + 1)  # A1111's x_T in diffusers' VP scale
    ref = run_diffusers(diffusers_pipe(torch_pipeline, scheduler), start.astype(np.float32), steps)
    assert_latents_match(latents, ref)


def test_ddim_matches_diffusers(demo_pipeline, torch_pipeline, monkeypatch):
    """A1111's DDIM on [1, 101, …, 901] makes 9 UNet calls and stops at ᾱ[1]: diffusers' DDIM ("leading",
    offset 1) after its 9th of 10 steps is at the same point."""
    from diffusers import DDIMScheduler

    steps = 10
    plan = make_plan(demo_pipeline, "DDIM", "automatic", steps)
    noise = np.random.default_rng(4).standard_normal(demo_pipeline.latent_shape(64, 64)).astype(np.float32)
    step_noise = FixedNoise(noise.shape, steps)
    latents = run_engine(demo_pipeline, plan, noise, step_noise, monkeypatch)
    assert step_noise.used == steps - 1  # drawn although η = 0
    scheduler = DDIMScheduler.from_config(torch_pipeline.scheduler.config, clip_sample=False,
                                          set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    ref = run_diffusers(diffusers_pipe(torch_pipeline, scheduler), noise[None], steps, stop_after=steps - 1)
    assert_latents_match(latents, ref)


def assert_finite_image(pipeline, sampler: str, scheduler: str, steps: int = 3, size: int = 32) -> None:
    plan = make_plan(pipeline, sampler, scheduler, steps)
    result = pipeline.txt2img(replace(plan, width=size, height=size))
    assert np.isfinite(result.latents[0]).all()
    pixels = np.asarray(result.images[0])
    assert pixels.shape == (size, size, 3) and pixels.std() > 0


# Every sampler with its default schedule, every scheduler under two samplers: the quick cover.
SOME = [(sampler, "automatic") for sampler in SAMPLERS] + [
    (sampler, scheduler) for sampler in ("Euler a", "DPM++ 2M SDE") for scheduler in SCHEDULERS if scheduler != "automatic"
]
ALL = [(sampler, scheduler) for sampler in SAMPLERS for scheduler in SCHEDULERS if (sampler, scheduler) not in SOME]


@pytest.mark.parametrize("sampler,scheduler", SOME, ids=[f"{a}-{b}" for a, b in SOME])
@pytest.mark.slow
def test_samplers_and_schedulers_give_finite_images(demo_pipeline, sampler, scheduler):
    assert_finite_image(demo_pipeline, sampler, scheduler)


@pytest.mark.slow
@pytest.mark.parametrize("sampler,scheduler", ALL, ids=[f"{a}-{b}" for a, b in ALL])
def test_every_other_sampler_and_scheduler_gives_a_finite_image(demo_pipeline, sampler, scheduler):
    assert_finite_image(demo_pipeline, sampler, scheduler)


@pytest.mark.parametrize("sampler", [n for n, s in SAMPLERS.items() if s.kind == S.TIMESTEPS])
def test_timestep_samplers_ignore_the_scheduler(demo_pipeline, sampler):
    grids = {tuple(demo_pipeline.sigmas(sampler, scheduler, 7)) for scheduler in SCHEDULERS}
    assert len(grids) == 1


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC", "DDIM CFG++", "DPM fast", "LCM", "Euler a"])
def test_img2img_with_every_kind_of_sampler(demo_pipeline, sampler):
    from PIL import Image

    from engine.plan import Img2ImgPlan

    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    steps = 6
    plan = GenerationPlan(
        prompts=("a red circle",), negative_prompts=("",), seeds=(1,), subseeds=(1,), width=64, height=64,
        steps=steps, cfg_scale=7.0, sampler=sampler, scheduler="automatic",
        img2img=Img2ImgPlan(init_images=(init,), denoising_strength=0.5),
    )
    result = demo_pipeline.img2img(plan)
    assert np.isfinite(result.latents[0]).all()


def test_ngms_skips_the_unconditional_half_on_odd_steps(demo_pipeline, monkeypatch):
    """s_min_uncond: below that σ, every odd step runs the UNet on the cond rows only (A1111
    modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward)."""
    batches: list[int] = []
    run = demo_pipeline.backend.run

    def recording_run(component, inputs):
        if component == "unet":
            batches.append(inputs["sample"].shape[0])
        return run(component, inputs)

    monkeypatch.setattr(demo_pipeline.backend, "run", recording_run)
    plan = make_plan(demo_pipeline, "Euler", "automatic", 6, sampler_settings=SamplerSettings(s_min_uncond=100.0))
    demo_pipeline.txt2img(plan)
    assert batches == [2, 1, 2, 1, 2, 1]
    batches.clear()
    all_steps = SamplerSettings(s_min_uncond=100.0, s_min_uncond_all=True)
    demo_pipeline.txt2img(make_plan(demo_pipeline, "Euler", "automatic", 6, sampler_settings=all_steps))
    assert batches == [1] * 6

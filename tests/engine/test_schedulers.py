"""Schedulers against A1111's k_diffusion/external.py: DiscreteSchedule and modules/sd_schedulers.py (float32,
6 significant digits), and their options."""

from __future__ import annotations

import numpy as np
import pytest

from engine.schedules import (
    SCHEDULERS,
    ModelSchedule,
    ScheduleOptions,
    beta_ppf,
    find_scheduler,
    get_sigmas,
    lcm_schedule,
    scaled_linear_alphas_cumprod,
)
from engine.timestep_samplers import ddim_timesteps, grid_sigmas, timestep_pass

SD15 = ModelSchedule(scaled_linear_alphas_cumprod())

# A1111 modules/sd_schedulers.py, SD1.5 schedule, n = 10.
VECTORS = {
    "uniform": "14.6146 7.83988 4.60917 2.91831 1.95016 1.34493 0.932358 0.624977 0.368658 0.0291675 0",
    "normal": "14.6146 7.83988 4.60917 2.91831 1.95016 1.34493 0.932358 0.624977 0.368658 0.0291675 0",
    "karras": "14.6146 9.10293 5.4784 3.16861 1.74942 0.914077 0.446921 0.2014 0.0819111 0.0291675 0",
    "exponential": "14.6146 7.32488 3.67124 1.84003 0.922227 0.462222 0.231666 0.116111 0.0581952 0.0291675 0",
    "polyexponential": "14.6146 7.32488 3.67124 1.84003 0.922227 0.462222 0.231666 0.116111 0.0581952 0.0291675 0",
    "sgm_uniform": "14.6146 8.30717 5.09241 3.32507 2.27973 1.61558 1.16286 0.831884 0.571189 0.343705 0",
    "kl_optimal": "14.6146 4.56504 2.63289 1.78645 1.29477 0.961588 0.711627 0.50942 0.335638 0.178347 0.0291675",
    "align_your_steps": "14.615 6.11351 3.56511 2.39387 1.64996 1.13579 0.742518 0.445007 0.169205 0.029 0",
    "simple": "14.6146 8.3028 5.08776 3.32108 2.27646 1.61289 1.16058 0.82986 0.569285 0.341674 0",
    "ddim": "8.39068 5.13443 3.34776 2.29285 1.62369 1.16822 0.835653 0.57405 0.346187 0.0413145 0",
    "beta": "14.6146 13.9278 12.491 10.5976 8.44244 6.20137 4.0462 2.15283 0.716024 0.0291675 0",
}
AYS_SDXL = "14.615 5.9634 3.33897 1.85505 1.10233 0.674959 0.431142 0.260621 0.122519 0.029 0"


def assert_6_digits(sigmas: np.ndarray, expected: str) -> None:
    want = np.asarray([float(v) for v in expected.split()])
    assert sigmas.dtype == np.float32
    assert sigmas.shape == want.shape
    np.testing.assert_allclose(sigmas, want, rtol=6e-6, atol=0)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_scheduler_matches_a1111_vector(name):
    assert_6_digits(get_sigmas(SD15, 10, name), VECTORS[name])


def test_align_your_steps_sdxl_table():
    assert_6_digits(get_sigmas(SD15, 10, "align_your_steps", options=ScheduleOptions(sdxl=True)), AYS_SDXL)


def test_align_your_steps_eleven_steps_is_the_table():
    sigmas = get_sigmas(SD15, 11, "align_your_steps")
    np.testing.assert_allclose(sigmas[:-1], [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399,
                                             0.152, 0.029], rtol=1e-7)
    assert sigmas[-1] == 0


def test_model_schedule_constants():
    """ᾱ and DiscreteSchedule values (A1111 modules/sd_models.py, k_diffusion/external.py)."""
    ac = SD15.alphas_cumprod
    assert ac.dtype == np.float32
    np.testing.assert_allclose(ac[[0, 1, 500, 998, 999]],
                               [0.999149978, 0.998296022, 0.276332676, 0.00471669901, 0.00466009835], rtol=1e-8)
    assert SD15.sigma_min == pytest.approx(0.029167532920837402, rel=1e-7)
    assert SD15.sigma_max == pytest.approx(14.614642143249512, rel=1e-7)
    np.testing.assert_allclose(SD15.sigmas[[1, 500]], [0.0413145, 1.6182789], rtol=1e-6)
    assert float(SD15.sigma_to_t(14.6146)) == pytest.approx(999, abs=1e-3)
    assert float(SD15.sigma_to_t(0.0291675)) == pytest.approx(0, abs=1e-3)
    assert float(SD15.sigma_to_t(1.0)) == pytest.approx(353.8904, abs=1e-3)
    assert float(SD15.t_to_sigma(500.5)) == pytest.approx(1.6209832, rel=1e-6)


def test_automatic_uses_the_samplers_default_else_the_native_schedule():
    np.testing.assert_array_equal(get_sigmas(SD15, 7, "automatic", "karras"), get_sigmas(SD15, 7, "karras"))
    np.testing.assert_array_equal(get_sigmas(SD15, 7, "automatic", None), get_sigmas(SD15, 7, "uniform"))
    # A label works like a name; an unknown scheduler is Automatic.
    np.testing.assert_array_equal(get_sigmas(SD15, 7, "Karras"), get_sigmas(SD15, 7, "karras"))
    np.testing.assert_array_equal(get_sigmas(SD15, 7, "nonsense", "exponential"),
                                  get_sigmas(SD15, 7, "exponential"))


@pytest.mark.parametrize("name", ["karras", "uniform", "kl_optimal", "ddim"])
def test_discard_next_to_last_sigma_drops_the_penultimate_of_one_more_step(name):
    full = get_sigmas(SD15, 9, name)
    discarded = get_sigmas(SD15, 8, name, discard_next_to_last_sigma=True)
    np.testing.assert_array_equal(discarded, np.concatenate([full[:-2], full[-1:]]))


def test_sigma_range_and_rho_options():
    options = ScheduleOptions(sigma_min=0.1, sigma_max=10.0, rho=3.0)
    karras = get_sigmas(SD15, 5, "karras", options=options)
    assert karras[0] == pytest.approx(10.0) and karras[-2] == pytest.approx(0.1)
    ramp = np.linspace(0, 1, 5)
    np.testing.assert_allclose(karras[:-1], (10 ** (1 / 3) + ramp * (0.1 ** (1 / 3) - 10 ** (1 / 3))) ** 3, rtol=1e-6)
    # rho only applies where the scheduler has one; uniform ignores the σ range altogether.
    np.testing.assert_array_equal(get_sigmas(SD15, 5, "exponential", options=ScheduleOptions(rho=3.0)),
                                  get_sigmas(SD15, 5, "exponential"))
    np.testing.assert_array_equal(get_sigmas(SD15, 5, "uniform", options=options), get_sigmas(SD15, 5, "uniform"))
    old = get_sigmas(SD15, 5, "exponential", options=ScheduleOptions(old_karras_sigmas=True))
    assert old[0] == pytest.approx(10.0) and old[-2] == pytest.approx(0.1)


def test_beta_quantile_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    for a, b in [(0.6, 0.6), (0.5, 2.0), (3.0, 1.2), (1.0, 1.0)]:
        for p in np.concatenate([rng.uniform(0, 1, 30), [1e-6, 0.5, 0.9999]]):
            assert beta_ppf(float(p), a, b) == pytest.approx(stats.beta.ppf(p, a, b), rel=1e-11, abs=1e-15)
    for p in [1e-12, 1e-9, 1 - 1e-9]:  # the tails A1111's default α = β = 0.6 reaches
        assert beta_ppf(p, 0.6, 0.6) == pytest.approx(stats.beta.ppf(p, 0.6, 0.6), rel=1e-11)
    assert beta_ppf(0.0, 0.6, 0.6) == 0.0 and beta_ppf(1.0, 0.6, 0.6) == 1.0


def test_beta_schedule_options():
    sigmas = get_sigmas(SD15, 6, "beta", options=ScheduleOptions(beta_alpha=2.0, beta_beta=0.5))
    from scipy import stats

    q = stats.beta.ppf(1 - np.linspace(0, 1, 6), 2.0, 0.5)
    np.testing.assert_allclose(sigmas[:-1], SD15.sigma_min + q * (SD15.sigma_max - SD15.sigma_min), rtol=1e-6)


def test_registry_matches_a1111_schedulers_list():
    """A1111 modules/sd_schedulers.py: schedulers: order, labels, aliases, default rho, need_inner_model."""
    rows = [(s.name, s.label, s.aliases, s.default_rho, s.need_inner_model) for s in SCHEDULERS.values()]
    assert rows == [
        ("automatic", "Automatic", None, -1.0, False),
        ("uniform", "Uniform", None, -1.0, True),
        ("karras", "Karras", None, 7.0, False),
        ("exponential", "Exponential", None, -1.0, False),
        ("polyexponential", "Polyexponential", None, 1.0, False),
        ("sgm_uniform", "SGM Uniform", ("SGMUniform",), -1.0, True),
        ("kl_optimal", "KL Optimal", None, -1.0, False),
        ("align_your_steps", "Align Your Steps", None, -1.0, False),
        ("simple", "Simple", None, -1.0, True),
        ("normal", "Normal", None, -1.0, True),
        ("ddim", "DDIM", None, -1.0, True),
        ("beta", "Beta", None, -1.0, True),
    ]
    assert find_scheduler("SGM Uniform").name == "sgm_uniform"
    assert find_scheduler("SGMUniform") is None  # aliases only work as a sampler-name suffix


def test_lcm_schedule():
    """A1111 modules/sd_samplers_lcm.py: LCMCompVisDenoiser: 50 valid timesteps 20k+19; Automatic =
    linspace(999, 19, n) through LCM's t → σ."""
    lcm = lcm_schedule(SD15)
    assert len(lcm.sigmas) == 50
    assert lcm.sigma_min == pytest.approx(float(SD15.sigmas[19]))
    assert lcm.sigma_max == pytest.approx(float(SD15.sigmas[999]))
    np.testing.assert_array_equal(lcm.sigma_to_t(SD15.sigmas[[19, 39, 999]]), [19, 39, 999])
    assert int(lcm.sigma_to_t(float(SD15.sigmas[45]))) == 39  # snaps to the nearest valid timestep
    sigmas = get_sigmas(lcm, 4, "automatic")
    k = (np.linspace(999, 19, 4) - 19) / 20  # positions on the 50 valid sigmas
    log_valid = np.log(SD15.sigmas[19::20].astype(np.float64))
    expected = np.exp(np.interp(k, np.arange(50), log_valid))
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-6)
    assert sigmas[-1] == 0 and len(sigmas) == 5
    # Other schedulers take LCM's σ range.
    karras = get_sigmas(lcm, 4, "karras")
    assert karras[-2] == pytest.approx(lcm.sigma_min, rel=1e-6)


def test_ddim_timestep_grid():
    """A1111 modules/sd_samplers_timesteps_impl.py: ddim: 20 → [1, 51, …, 951]; 30 → 31 values [1, 34, …,
    991]; 7 → 8 values [1, 143, …, 995]."""
    np.testing.assert_array_equal(ddim_timesteps(20), np.arange(1, 1000, 50))
    assert len(ddim_timesteps(30)) == 31 and ddim_timesteps(30)[[1, -1]].tolist() == [34, 991]
    assert ddim_timesteps(7).tolist() == [1, 143, 285, 427, 569, 711, 853, 995]
    assert ddim_timesteps(1).tolist() == [1]


@pytest.mark.parametrize("steps", [1, 3, 7, 20, 30, 50, 600])
def test_grid_sigmas_read_back_as_the_ddim_grid(steps):
    """The pipeline carries the timestep samplers' grid as σ values; txt2img restores the whole grid."""
    sigmas = grid_sigmas(SD15, steps)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    np.testing.assert_array_equal(timestep_pass(SD15, sigmas, img2img=False).timesteps, ddim_timesteps(steps))


def test_grid_sigmas_img2img_tail():
    """img2img takes σ[steps − t_enc − 1:] like any schedule: that walks T[:t_enc] after noising at T[t_enc]."""
    steps, t_enc = 30, 10
    tail = grid_sigmas(SD15, steps)[steps - t_enc - 1 :]
    walk = timestep_pass(SD15, tail, img2img=True)
    grid = ddim_timesteps(steps)
    np.testing.assert_array_equal(walk.timesteps, grid[:t_enc])
    assert walk.noise_timestep == grid[t_enc]

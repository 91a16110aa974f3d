"""Brownian-tree noise: equal to torchsde 0.2.6 (A1111's pin) run here, and Brownian by its properties."""

from __future__ import annotations

import platform
import random

import numpy as np
import pytest
import torch

from engine.brownian import BrownianTree, brownian_noise_sampler
from engine.rng import PhiloxGenerator, randn

try:
    import torchsde
    from torchsde._brownian import brownian_interval
except ImportError:  # the property tests below still run
    torchsde = brownian_interval = None
needs_torchsde = pytest.mark.skipif(torchsde is None, reason="torchsde (test extra) is the reference")

AVX2_TORCH = platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in (
    "AVX2", "AVX512")

SIGMAS = np.float32([14.614642, 10.2, 6.9, 4.5, 2.8, 1.7, 0.95, 0.51, 0.25, 0.0291675, 0.0])
SHAPE = (4, 8, 8)


def queries(sigmas: np.ndarray) -> list[tuple[float, float]]:
    """What the SDE samplers ask for (σ_i → midpoint, σ_i → σ_i+1), plus ranges past both ends."""
    out = []
    for a, b in zip(sigmas[:-2], sigmas[1:-1], strict=True):
        out += [(float(a), float(np.float32(np.sqrt(a * b)))), (float(a), float(b))]
    return out + [(20.0, 0.001), (float(sigmas[0]), float(sigmas[-2]))]


@pytest.fixture
def nv_torchsde(monkeypatch):
    """torchsde with its node draws routed to the NV source, as A1111 patches `_randn` (A1111
    modules/sd_samplers_common.py: torchsde_randn)."""
    monkeypatch.setattr(brownian_interval, "_randn", lambda size, dtype, device, seed: torch.from_numpy(
        PhiloxGenerator(int(seed)).randn(size)).to(dtype))


def reference_tree(seed: int, sigmas: np.ndarray = SIGMAS):
    t0, t1 = torch.tensor(sigmas[sigmas > 0].min()), torch.tensor(sigmas.max())
    return torchsde.BrownianTree(t0, torch.zeros(SHAPE), t1, entropy=seed, tol=1e-6, pool_size=24)


def query_reference(tree, a: float, b: float) -> np.ndarray:
    lo, hi = sorted((torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
    return tree(lo, hi).numpy()


@needs_torchsde
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", [0, 2**32 + 9])
@pytest.mark.slow
def test_tree_equals_torchsde_bit_for_bit(nv_torchsde, seed):
    ref = reference_tree(seed)
    ours = BrownianTree(float(SIGMAS[-2]), float(SIGMAS[0]), seed, lambda s: randn(s, SHAPE, "NV"))
    for a, b in queries(SIGMAS):
        lo, hi = sorted((float(np.float32(a)), float(np.float32(b))))
        np.testing.assert_array_equal(ours(lo, hi), query_reference(ref, a, b), err_msg=f"[{lo}, {hi}]")


@needs_torchsde
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.skipif(not AVX2_TORCH, reason="the CPU source is bit-exact with torch's AVX2 normal kernel only")
@pytest.mark.slow
def test_cpu_source_tree_equals_unpatched_torchsde():
    # torchsde's own node draws are torch CPU generators: A1111's behaviour with randn_source CPU.
    ref = reference_tree(77)
    ours = BrownianTree(float(SIGMAS[-2]), float(SIGMAS[0]), 77, lambda s: randn(s, SHAPE, "CPU"))
    for a, b in queries(SIGMAS)[::-1]:
        lo, hi = sorted((float(np.float32(a)), float(np.float32(b))))
        np.testing.assert_array_equal(ours(lo, hi), query_reference(ref, a, b))


@needs_torchsde
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.slow
def test_noise_sampler_equals_k_diffusion(nv_torchsde):
    seeds = [5, 6]
    trees = [reference_tree(s) for s in seeds]

    def k_diffusion(sigma: float, sigma_next: float) -> np.ndarray:
        # BrownianTreeNoiseSampler → BatchedBrownianTree: sort the times, stack per seed, restore the sign.
        t0, t1 = torch.tensor(sigma, dtype=torch.float32), torch.tensor(sigma_next, dtype=torch.float32)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(lo, hi) for tree in trees]) * sign
        return (w / (t1 - t0).abs().sqrt()).numpy()

    ours = brownian_noise_sampler((2, *SHAPE), SIGMAS, seeds, "NV")
    for a, b in queries(SIGMAS):
        # torch 2.13's CPU float32 sqrt is not correctly rounded (1 ulp off on ~19 % of inputs here); we
        # divide by the IEEE square root, as CUDA does: equal to within an ulp.
        np.testing.assert_allclose(ours(a, b), k_diffusion(a, b), rtol=2.5e-7, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Properties (independent of torchsde)


def nv_tree(seed: int, shape=SHAPE, cache_size: int = 64) -> BrownianTree:
    return BrownianTree(0.0291675, 14.614642, seed, lambda s: randn(s, shape, "NV"), cache_size=cache_size)


def test_deterministic_and_independent_of_query_order_and_cache():
    points = [(0.0291675, 14.614642), (1.0, 2.5), (0.3, 0.31), (6.0, 14.0), (2.5, 6.0), (0.05, 9.0)]
    first = {p: nv_tree(3)(*p) for p in points}
    shuffled = points[:]
    random.Random(0).shuffle(shuffled)
    tiny_cache = nv_tree(3, cache_size=1)
    for p in shuffled:
        np.testing.assert_array_equal(tiny_cache(*p), first[p])
    assert not np.array_equal(nv_tree(4)(1.0, 2.5), first[(1.0, 2.5)])


def test_increments_add_up():
    tree = nv_tree(11)
    a, b, c = 0.7, 2.123456, 9.5
    np.testing.assert_allclose(tree(a, c), tree(a, b) + tree(b, c), atol=2e-6)


@pytest.mark.parametrize("interval", [(0.0291675, 14.614642), (1.0, 1.5), (3.0, 3.00002)])
def test_increment_variance_is_the_interval_length(interval):
    w = nv_tree(12, shape=(4, 64, 64))(*interval)
    n = w.size
    ratio = w.var() / (interval[1] - interval[0])
    assert abs(ratio - 1) < 6 * (2 / n) ** 0.5  # sample variance of n normals: relative std sqrt(2/n)
    assert abs(w.mean()) < 6 * ((interval[1] - interval[0]) / n) ** 0.5


def test_disjoint_increments_are_uncorrelated():
    tree = nv_tree(13, shape=(4, 64, 64))
    u, v = tree(0.5, 1.0).ravel(), tree(1.0, 1.7).ravel()
    assert abs(np.corrcoef(u, v)[0, 1]) < 6 / len(u) ** 0.5


def test_noise_sampler_scales_to_unit_variance_and_flips_with_direction():
    sampler = brownian_noise_sampler((1, 4, 64, 64), SIGMAS, [21], "NV")
    noise = sampler(2.8, 1.7)
    assert noise.shape == (1, 4, 64, 64) and noise.dtype == np.float32
    assert abs(noise.var() - 1) < 6 * (2 / noise.size) ** 0.5
    np.testing.assert_array_equal(sampler(1.7, 2.8), -noise)


def test_batch_composition_does_not_change_an_image_noise():
    batched = brownian_noise_sampler((3, *SHAPE), SIGMAS, [1, 2, 3], "GPU")
    alone = brownian_noise_sampler((1, *SHAPE), SIGMAS, [2], "GPU")
    for a, b in queries(SIGMAS)[:6]:
        np.testing.assert_array_equal(batched(a, b)[1], alone(a, b)[0])


def test_tree_spans_the_whole_schedule():
    """Queries beyond [min positive σ, max σ] are clamped: the whole tree is one increment."""
    tree = BrownianTree(float(SIGMAS[-2]), float(SIGMAS[0]), 8, lambda s: randn(s, SHAPE, "NV"))
    np.testing.assert_array_equal(tree(0.0, 100.0), tree(float(SIGMAS[-2]), float(SIGMAS[0])))
    np.testing.assert_array_equal(tree(0.0, 0.01), np.zeros(SHAPE, np.float32))


@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE", "DPM++ SDE"])
@pytest.mark.slow
def test_pipeline_sde_samplers_use_the_seeded_trees(demo_pipeline, sampler):
    """The trees are seeded by the image seeds alone: ENSD, which reseeds the generators, changes nothing."""
    from dataclasses import replace

    from engine.plan import GenerationPlan
    from engine.samplers import SAMPLERS

    if sampler not in SAMPLERS or not SAMPLERS[sampler].options.get("brownian_noise"):
        pytest.skip(f"{sampler} is not registered as a Brownian-noise sampler")
    plan = GenerationPlan(
        prompts=("a red circle",), negative_prompts=("",), seeds=(5,), subseeds=(5,), width=64, height=64,
        steps=3, cfg_scale=7.0, sampler=sampler, scheduler="automatic",
    )
    base = demo_pipeline.txt2img(plan).latents[0]
    np.testing.assert_array_equal(demo_pipeline.txt2img(replace(plan, eta_noise_seed_delta=31337)).latents[0], base)
    other = demo_pipeline.txt2img(replace(plan, seeds=(6,)), initial_noise=randn(5, (1, 4, 8, 8), "GPU"))
    assert not np.array_equal(other.latents[0], base)  # the same initial noise, other trees

"""Noise sources and per-image seeds against torch run here, a scalar Philox written here, and the spec's vectors.

References: torch's CPU generator (`torch.randn`), A1111 modules/rng.py: ImageRNG.first, ImageRNG.next
(vectors and A1111's `ImageRNG`
procedure, re-implemented below in torch), and a plain-int Philox 4x32-10 following A1111
modules/rng_philox.py and torch's CUDA
kernel loop.
"""

from __future__ import annotations

import math
import platform
from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.rng import (
    CudaPhiloxGenerator,
    ImageRNG,
    PhiloxGenerator,
    TorchCpuGenerator,
    _fma32,
    make_generator,
    slerp,
)

# torch's float32 normal kernel for ≥ 16 elements is the AVX2 one on x86 with AVX2 (also under AVX-512
# dispatch); elsewhere torch uses libm and no bit-exact emulation is claimed.
AVX2_TORCH = platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in (
    "AVX2", "AVX512")
needs_avx2_torch = pytest.mark.skipif(not AVX2_TORCH, reason="torch here does not use its AVX2 normal kernel")

SEEDS = [0, 1, 42, 3141592653, 2**32 - 1, 2**32 + 5, 2**40 + 123]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------------------------------------------------------
# CPU source


@needs_avx2_torch
@pytest.mark.parametrize("seed", SEEDS)
def test_cpu_equals_torch_randn_bit_for_bit(seed):
    # Consecutive calls on one generator: latent sizes, n % 16 ≠ 0 tails, and n < 16 (the scalar path, whose
    # cached second normal survives across calls and across ≥ 16-element calls).
    shapes = [(4, 64, 64), (4, 75, 75), (5,), (16,), (4, 8, 8), (1,), (33,), (3, 5), (4, 9, 9), (15,), (2,)]
    ours, theirs = TorchCpuGenerator(seed), torch.Generator().manual_seed(seed)
    for shape in shapes:
        expected = torch.randn(shape, generator=theirs).numpy()
        np.testing.assert_array_equal(bits(ours.randn(shape)), bits(expected), err_msg=f"shape {shape}")


def assert_printed(actual, printed) -> None:
    np.testing.assert_allclose(actual, np.asarray(printed, dtype=np.float64), rtol=1.5e-7, atol=0)


def test_cpu_matches_spec_vectors():
    # The spec prints 7–8 significant digits, so equality is to the printed precision (exactness: test above).
    g = TorchCpuGenerator(0)
    x = g.randn((4, 64, 64)).ravel()
    spec = [-1.1258398, -1.1523602, -0.25057858, -0.4338788, 0.84871036, 0.69200915, -0.31601277, -2.1152194,
            0.32227492, -1.2633348, 0.3499832, 0.30813393, 0.11984151, 1.2376579, 1.1167772, -0.24727815]
    assert_printed(x[:16], np.float32(spec))
    assert_printed(x[-4:], np.float32([-1.040714, 0.09078388, -1.3664697, -1.078208]))
    assert_printed(
        g.randn((4, 64, 64)).ravel()[:4], np.float32([-0.5518361, 1.5398073, 1.0035588, -0.79478943]))
    g = TorchCpuGenerator(42)
    assert_printed(g.randn((4, 64, 64)).ravel()[:8], np.float32(
        [1.9269153, 1.4872841, 0.9007172, -2.105521, 0.67841846, -1.2345449, -0.04306748, -1.604667]))
    assert_printed(
        g.randn((4, 64, 64)).ravel()[:4], np.float32([-1.3046587, 1.4507034, 0.24427997, -0.27988964]))
    x = TorchCpuGenerator(7).randn((4, 75, 75)).ravel()
    assert_printed(x[:4], np.float32([-0.8201345, 0.39563116, 0.8989085, -1.3884039]))
    assert_printed(x[22480:22484], np.float32([0.5693334, -0.21727544, -0.5418533, 0.941543]))
    assert_printed(x[-4:], np.float32([-0.09462842, 1.4524804, -0.69085896, -1.2545346]))
    assert_printed(
        TorchCpuGenerator(1).randn((5,)), np.float32([0.66135216, 0.2669241, 0.06167726, 0.6213173, -0.45190597]))


def test_cpu_seed_is_taken_mod_2_32():
    np.testing.assert_array_equal(TorchCpuGenerator(2**32 + 5).randn((64,)), TorchCpuGenerator(5).randn((64,)))


def _exact_fma_to_float32(a: float, b: float, c: float) -> np.float32:
    """Round the exact rational a·b + c to float32 (nearest, ties to even) by bracketing."""
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    r = np.float32(float(exact))  # float(Fraction) is correctly rounded to float64; refine around it
    candidates = [np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))]
    errors = [abs(Fraction(float(v)) - exact) for v in candidates]
    best = min(errors)
    winners = [v for v, e in zip(candidates, errors, strict=True) if e == best]
    if len(winners) == 1:
        return winners[0]
    return next(v for v in winners if int(np.float32(v).view(np.uint32)) % 2 == 0)


def test_fma32_rounds_once():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(3000).astype(np.float32)
    b = (rng.standard_normal(3000) * 10.0 ** rng.integers(-8, 8, 3000)).astype(np.float32)
    c = rng.standard_normal(3000).astype(np.float32)
    # a·b + c whose float64 sum lands exactly halfway between two float32: rounding twice picks the wrong one.
    a = np.append(a, [np.float32(2.0**-24 * (1 + 2.0**-23)), np.float32(2.0**-24 * (1 + 2.0**-23))])
    b = np.append(b, [np.float32(1 - 2.0**-23), np.float32(1 - 2.0**-23)])
    c = np.append(c, [np.float32(1 + 2.0**-23), np.float32(-(1 + 2.0**-23))])
    expected = np.array([_exact_fma_to_float32(float(x), float(y), float(z)) for x, y, z in zip(a, b, c, strict=True)])
    assert expected[-2] == np.float32(1 + 2.0**-23)  # the naive float64 route gives 1 + 2⁻²²
    np.testing.assert_array_equal(bits(_fma32(a, b, c)), bits(expected))


# ---------------------------------------------------------------------------------------------------------------
# NV and GPU sources

_M32 = 0xFFFFFFFF
_A = float(np.float32(2.3283064e-10))
_B = float(np.float32(2.3283064e-10 * 6.2831855))


def philox_reference(counter: tuple[int, int, int, int], seed: int) -> tuple[int, int, int, int]:
    """Philox 4x32-10 on Python ints, as A1111 modules/rng_philox.py states it."""
    c0, c1, c2, c3 = counter
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for round_no in range(10):
        p0, p1 = c0 * 0xD2511F53, c2 * 0xCD9E8D57
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _M32, (p0 >> 32) ^ c3 ^ k1, p0 & _M32
        if round_no < 9:
            k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def box_muller_reference(g0: int, g1: int) -> tuple[float, float]:
    u, v = g0 * _A + _A / 2, g1 * _B + _B / 2
    r = math.sqrt(-2.0 * math.log(u))
    return r * math.sin(v), r * math.cos(v)


def test_nv_matches_spec_vectors():
    g = PhiloxGenerator(0)
    # The rng_philox docstring's numbers were printed from torch on CUDA (fast sincos/log): within 3 ulp.
    docstring = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                 [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                 [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]
    np.testing.assert_allclose(g.randn((3, 4)), docstring, rtol=0, atol=3 * 2.0**-23 * 2)
    np.testing.assert_array_equal(g.randn((4,)), np.float32([0.18082589, -0.5522627, 0.9238134, -0.73497033]))
    x = PhiloxGenerator(42).randn((4, 64, 64)).ravel()
    np.testing.assert_array_equal(x[:8], np.float32(
        [0.19401887, 2.1613739, -0.17205095, 0.84906, -1.9243993, 0.6529853, -0.64944106, -0.81752455]))
    np.testing.assert_array_equal(x[-4:], np.float32([0.54676837, -0.1449447, -0.9526748, 0.08298858]))
    np.testing.assert_array_equal(
        PhiloxGenerator(2**32 + 5).randn((4,)), np.float32([-2.8427474, 1.3404924, 0.27223086, 1.4550629]))


@pytest.mark.parametrize("seed", [3, 2**32 + 5, 2**64 - 1])
def test_nv_equals_scalar_philox(seed):
    g = PhiloxGenerator(seed)
    for offset, n in enumerate([37, 5, 37]):
        expected = [box_muller_reference(*philox_reference((offset, 0, i, 0), seed)[:2])[0] for i in range(n)]
        np.testing.assert_array_equal(bits(g.randn((n,))), bits(np.float32(expected)))


def cuda_randn_reference(seed: int, n: int, threads: int, offset: int) -> tuple[np.ndarray, int]:
    """torch's CUDA normal kernel as a plain loop over threads (grid-stride, curand_normal4, unroll 4)."""
    blocks = min(threads // 256, (n + 255) // 256)
    t = 256 * blocks
    out = np.full(n, np.nan, dtype=np.float32)
    for idx in range(t):
        for it, linear in enumerate(range(idx, -(-n // (4 * t)) * 4 * t, 4 * t)):
            g = philox_reference((offset // 4 + it, 0, idx, 0), seed)
            values = [*box_muller_reference(g[0], g[1]), *box_muller_reference(g[2], g[3])]
            for ii in range(4):
                li = linear + t * ii
                if li < n:
                    out[li] = values[ii]
    return out, offset + 4 * (-(-n // (4 * t)))


def test_gpu_with_thread_count_follows_the_cuda_kernel():
    seed, threads = 2**33 + 17, 512
    ours = CudaPhiloxGenerator(seed, threads)
    offset = 0
    for n in [3000, 700, 100]:  # more elements than threads, then fewer
        expected, offset = cuda_randn_reference(seed, n, threads, offset)
        np.testing.assert_array_equal(bits(ours.randn((n,))), bits(expected))


def test_gpu_equals_nv_up_to_the_thread_count():
    gpu, nv = make_generator(9, "GPU", gpu_threads=16384), make_generator(9, "NV")
    for shape in [(4, 64, 64), (4, 8, 8), (4, 64, 64)]:
        np.testing.assert_array_equal(gpu.randn(shape), nv.randn(shape))
    assert type(make_generator(9, "GPU")) is PhiloxGenerator
    small = make_generator(9, "GPU", gpu_threads=4096).randn((4, 64, 64))
    assert not np.array_equal(small, make_generator(9, "NV").randn((4, 64, 64)))


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="randn_source"):
        make_generator(1, "TPU")


# ---------------------------------------------------------------------------------------------------------------
# ImageRNG: A1111's procedure (A1111 modules/rng.py: ImageRNG.first, ImageRNG.next) re-implemented in torch
# with the CPU generator


def slerp_torch(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class A1111ImageRNG:
    """A1111's `ImageRNG` with randn_source CPU, written from the spec with torch generators."""

    def __init__(self, shape, seeds, subseeds=(), strength=0.0, resize_h=-1, resize_w=-1, ensd=0):
        self.shape, self.seeds, self.subseeds, self.strength = tuple(shape), seeds, subseeds, strength
        self.resize_h, self.resize_w, self.ensd = resize_h, resize_w, ensd
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    @staticmethod
    def fresh(seed, shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    def first(self) -> np.ndarray:
        shape = self.shape
        noise_shape = shape if self.resize_h <= 0 or self.resize_w <= 0 else (
            shape[0], self.resize_h // 8, self.resize_w // 8)
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            subnoise = None
            if self.strength != 0:
                subnoise = self.fresh(self.subseeds[i] if i < len(self.subseeds) else 0, noise_shape)
            if noise_shape != shape:
                noise = self.fresh(seed, noise_shape)
            else:
                noise = torch.randn(shape, generator=generator)
            if subnoise is not None:
                noise = slerp_torch(self.strength, noise, subnoise)
            if noise_shape != shape:
                x = torch.randn(shape, generator=generator)
                dx = (shape[2] - noise_shape[2]) // 2
                dy = (shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx, ty = (0 if dx < 0 else dx), (0 if dy < 0 else dy)
                dx, dy = max(-dx, 0), max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x
            xs.append(noise)
        if self.ensd:
            self.generators = [torch.Generator().manual_seed(s + self.ensd) for s in self.seeds]
        return torch.stack(xs).numpy()

    def next(self) -> np.ndarray:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).numpy()


def ours_and_reference(shape, seeds, subseeds=(), strength=0.0, resize_h=-1, resize_w=-1, ensd=0):
    ours = ImageRNG(shape, seeds, "CPU", ensd, subseeds=subseeds, subseed_strength=strength,
                    seed_resize_from_h=resize_h, seed_resize_from_w=resize_w)
    return ours, A1111ImageRNG(shape, seeds, subseeds, strength, resize_h, resize_w, ensd)


@needs_avx2_torch
@pytest.mark.parametrize("ensd", [0, 31337, 2**32])
def test_first_and_per_step_noise_follow_a1111(ensd):
    ours, ref = ours_and_reference((4, 8, 8), [5, 2**32 - 3], ensd=ensd)
    np.testing.assert_array_equal(ours.next(), ref.first())  # the first next() is first()
    for _ in range(2):
        np.testing.assert_array_equal(ours.next(), ref.next())


@needs_avx2_torch
@pytest.mark.parametrize("resize", [(32, 48), (128, 96), (40, 200), (64, 64), (-1, 96)])
def test_seed_resize_pastes_centred_as_a1111(resize):
    # Smaller, larger, mixed (one dimension cropped, the other padded), equal, and one side unset.
    ours, ref = ours_and_reference((4, 8, 8), [11, 12], resize_h=resize[0], resize_w=resize[1])
    np.testing.assert_array_equal(ours.first(), ref.first())
    np.testing.assert_array_equal(ours.next(), ref.next())  # the image's own generator continues


@needs_avx2_torch
@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_variation_seed_slerp_as_a1111(strength):
    # Two subseeds for three images: the third image gets subseed 0.
    ours, ref = ours_and_reference((4, 16, 8), [3, 3, 3], subseeds=[100, 101], strength=strength,
                                   resize_h=96, resize_w=40, ensd=7)
    np.testing.assert_allclose(ours.first(), ref.first(), rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(ours.next(), ref.next())


def test_slerp_nearly_parallel_branch_swaps_weights():
    rng = np.random.default_rng(1)
    low = rng.standard_normal((4, 8, 8)).astype(np.float32)
    high = (low + 1e-3 * rng.standard_normal((4, 8, 8))).astype(np.float32)
    ours = slerp(0.25, low, high)
    np.testing.assert_allclose(ours, slerp_torch(0.25, torch.from_numpy(low), torch.from_numpy(high)).numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours, 0.25 * low + 0.75 * high, rtol=1e-6, atol=1e-6)


def test_slerp_extremes_return_the_endpoints():
    rng = np.random.default_rng(2)
    low, high = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(slerp(0.0, low, high), low, atol=1e-5)
    np.testing.assert_allclose(slerp(1.0, low, high), high, atol=1e-5)


@pytest.mark.parametrize("source", ["GPU", "NV", "CPU"])
def test_batch_composition_does_not_change_an_image_noise(source):
    def draws(seeds, subseeds):
        rng = ImageRNG((4, 8, 8), seeds, source, 1234, subseeds=subseeds, subseed_strength=0.4,
                       seed_resize_from_h=48, seed_resize_from_w=80)
        return [rng.first(), rng.next(), rng.next()]

    batched = draws([7, 8, 9], [70, 80, 90])
    alone = draws([8], [80])
    for b, a in zip(batched, alone, strict=True):
        np.testing.assert_array_equal(b[1], a[0])
        assert not np.array_equal(b[0], b[1])


def test_pipeline_draws_initial_noise_with_the_plan_extras(demo_pipeline):
    """The plan's variation seed, seed resize and source reach the pipeline's ImageRNG."""
    from dataclasses import replace

    from engine.plan import GenerationPlan

    plain = GenerationPlan(
        prompts=("a red circle",), negative_prompts=("",), seeds=(5,), subseeds=(6,), width=64, height=64,
        steps=2, cfg_scale=7.0, sampler="Euler", scheduler="automatic",
    )
    plan = replace(plain, subseed_strength=0.5, seed_resize_from_w=96, seed_resize_from_h=32, randn_source="CPU")
    expected = ImageRNG((4, 8, 8), (5,), "CPU", subseeds=(6,), subseed_strength=0.5,
                        seed_resize_from_h=32, seed_resize_from_w=96).first()
    result = demo_pipeline.txt2img(plan)
    reference = demo_pipeline.txt2img(plain, initial_noise=expected)
    np.testing.assert_array_equal(result.latents[0], reference.latents[0])
    assert not np.array_equal(result.latents[0], demo_pipeline.txt2img(plain).latents[0])

"""Seeded noise as A1111 draws it: the noise sources of `randn_source` and the per-image generators.

NV is A1111's Philox 4x32-10 + Box–Muller; GPU is torch's CUDA generator (== NV up to the GPU's thread count);
CPU is torch's CPU generator, bit for bit (A1111 modules/rng.py, modules/rng_philox.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

SOURCES = ("GPU", "CPU", "NV")


class Generator(Protocol):
    """A seeded stream of standard normal float32 tensors; each `randn` call continues the stream."""

    def randn(self, shape: Sequence[int]) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------------------------
# NV: Philox 4x32-10 + Box–Muller in float64, as A1111's rng_philox (A1111 modules/rng_philox.py)

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _philox_words(seed: int, counter_lo: np.ndarray, subsequence: np.ndarray) -> tuple[np.ndarray, ...]:
    """Philox 4x32-10 output words for counters (counter_lo, 0, subsequence, 0) under the 64-bit key `seed`.

    The 32-bit words live in uint64 lanes so each round's 32×32→64 products need no conversions.
    """
    n = len(subsequence)
    c0 = np.broadcast_to(np.asarray(counter_lo, dtype=np.uint64), (n,))
    c1 = np.zeros(n, dtype=np.uint64)
    c2 = subsequence.astype(np.uint64)
    c3 = np.zeros(n, dtype=np.uint64)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for _ in range(10):
        p0 = c0 * _PHILOX_M0
        p1 = c2 * _PHILOX_M1
        c0 = (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0)
        c1 = p1 & _LOW32
        c2 = (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1)
        c3 = p0 & _LOW32
        k0, k1 = (k0 + _PHILOX_W0) & 0xFFFFFFFF, (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _box_muller(g0: np.ndarray, g1: np.ndarray, use_cos: np.ndarray | None = None) -> np.ndarray:
    """sqrt(−2 ln u)·sin v (or ·cos v where `use_cos`); uint32 × float32 promotes to float64, as in A1111's
    module, and the result is cast to float32."""
    u = g0 * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = g1 * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    angle = np.sin(v) if use_cos is None else np.where(use_cos, np.cos(v), np.sin(v))
    return (np.sqrt(-2.0 * np.log(u)) * angle).astype(np.float32)


class PhiloxGenerator:
    """A1111's "NV" generator: element i of a call uses counter (offset, 0, i, 0) and key = the 64-bit seed;
    the offset advances by one per call whatever its size."""

    def __init__(self, seed: int):
        self.seed = int(seed) % 2**64
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = math.prod(shape)
        g = _philox_words(self.seed, np.uint32(self.offset % 2**32), np.arange(n, dtype=np.uint32))
        self.offset += 1
        return _box_muller(g[0], g[1]).reshape(tuple(shape))


class CudaPhiloxGenerator:
    """torch's CUDA `randn` on a GPU that runs `threads` resident threads (SMs × max threads per SM), A1111
    modules/rng.py's
    default randn_source.

    torch launches T = 256·min(threads/256, ⌈n/256⌉) threads; element li is component (li // T) mod 4 of
    `curand_normal4` on Philox subsequence li mod T at counter offset/4 + li // 4T, where the four components
    are [BM(g0,g1).sin, BM(g0,g1).cos, BM(g2,g3).sin, BM(g2,g3).cos]. For n ≤ T that is exactly NV. Box–Muller
    is evaluated as NV does (float64), so values can differ from a real GPU in the last ulp, as NV's do.
    """

    def __init__(self, seed: int, threads: int):
        if threads < 256:
            raise ValueError("threads must be at least one 256-thread block")
        self.seed = int(seed) % 2**64
        self.threads = int(threads)
        self.offset = 0  # torch's philox offset, in 32-bit words (a multiple of 4)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = math.prod(shape)
        t = 256 * min(self.threads // 256, max(-(-n // 256), 1))
        li = np.arange(n, dtype=np.int64)
        component = (li // t) % 4
        counter = (self.offset // 4 + li // (4 * t)) % 2**32
        g = _philox_words(self.seed, counter.astype(np.uint32), (li % t).astype(np.uint32))
        pair = component >= 2
        first, second = np.where(pair, g[2], g[0]), np.where(pair, g[3], g[1])
        self.offset += 4 * max(-(-n // (4 * t)), 1)
        return _box_muller(first, second, use_cos=component % 2 == 1).reshape(tuple(shape))


# ---------------------------------------------------------------------------------------------------------------
# CPU: torch's CPU generator (MT19937) and its normal kernel, A1111 modules/rng.py: randn

_F = np.float32
_TIE_MASK = np.uint64((1 << 29) - 1)  # float64 mantissa bits below float32's
_TIE_BITS = np.uint64(1 << 28)  # ... exactly halfway between two float32


def _fma32(a, b, c) -> np.ndarray:
    """float32 a·b + c with a single rounding, as the hardware FMA in torch's vectorised kernel."""
    p = np.asarray(a, _F).astype(np.float64) * np.asarray(b, _F).astype(np.float64)  # exact: 24+24 bits
    c64 = np.asarray(c, _F).astype(np.float64)
    s = p + c64
    r = s.astype(_F)
    # Rounding to float64 then float32 differs from one rounding only when s lands exactly halfway between two
    # float32 (or in float32's subnormal range, checked the slow way too) and the float64 sum was inexact.
    suspect = ((s.view(np.uint64) & _TIE_MASK) == _TIE_BITS) | (np.abs(s) < np.finfo(_F).tiny)
    if np.any(suspect):
        idx = np.nonzero(suspect)
        p, c64 = np.broadcast_to(p, s.shape), np.broadcast_to(c64, s.shape)
        ps, cs, ss = p[idx], c64[idx], s[idx]
        bv = ss - ps
        err = (ps - (ss - bv)) + (cs - bv)  # TwoSum: p + c == s + err exactly
        rs = ss.astype(_F)
        neighbour = np.nextafter(rs, np.where(ss > rs, _F(np.inf), _F(-np.inf)))
        halfway = (ss != rs) & ((rs.astype(np.float64) + neighbour.astype(np.float64)) / 2 == ss)
        nudged = np.nextafter(ss, np.where(err > 0, np.inf, -np.inf)).astype(_F)
        r = r.copy()
        r[idx] = np.where(halfway & (err != 0), nudged, rs)
    return r


_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def _log_avx2(u: np.ndarray) -> np.ndarray:
    """ln u as avx_mathfun's log256_ps computes it (Cephes polynomial, FMAs where the compiler fused them)."""
    u = np.maximum(u, _F(np.finfo(_F).tiny))
    bits = u.view(np.uint32)
    e = ((bits >> np.uint32(23)).astype(np.int32) - 126).astype(_F)
    m = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(_F)  # mantissa in [0.5, 1)
    small = m < _F(0.707106781186547524)
    x = (m - _F(1)) + np.where(small, m, _F(0))
    e = e - small.astype(_F)
    z = x * x
    y = np.full_like(x, _F(_LOG_P[0]))
    for coefficient in _LOG_P[1:]:
        y = _fma32(y, x, _F(coefficient))
    y = y * x
    y = _fma32(y, z, e * _F(-2.12194440e-4))
    y = _fma32(-z, _F(0.5), y)
    return _fma32(e, _F(0.693359375), x + y)


def _sincos_avx2(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin θ, cos θ) for θ ≥ 0 as avx_mathfun's sincos256_ps computes them."""
    j = (theta * _F(1.27323954473516)).astype(np.int32)
    j = (j + 1) & ~1
    y = j.astype(_F)
    x = _fma32(y, _F(-0.78515625), theta)
    x = _fma32(y, _F(-2.4187564849853515625e-4), x)
    x = _fma32(y, _F(-3.77489497744594108e-8), x)
    z = x * x
    c = _fma32(_fma32(_F(2.443315711809948e-5), z, _F(-1.388731625493765e-3)), z, _F(4.166664568298827e-2))
    c = _fma32(c * z, z, -(z * _F(0.5))) + _F(1)
    s = _fma32(_fma32(_F(-1.9515295891e-4), z, _F(8.3321608736e-3)), z, _F(-1.6666654611e-1))
    s = _fma32(s * z, x, x)
    swap = (j & 2) != 0
    sin, cos = np.where(swap, c, s), np.where(swap, s, c)
    sin = np.where((j & 4) != 0, -sin, sin)
    cos = np.where((~(j - 2) & 4) != 0, -cos, cos)
    return sin, cos


def _normal_blocks(u: np.ndarray) -> np.ndarray:
    """torch's 16-element Box–Muller: per block, u[0:8] give radii and u[8:16] angles; cos → 0:8, sin → 8:16."""
    blocks = u.reshape(-1, 2, 8)
    radius = np.sqrt(_F(-2) * _log_avx2(_F(1) - blocks[:, 0]))
    sin, cos = _sincos_avx2(_F(2 * math.pi) * blocks[:, 1])
    return np.stack([radius * cos, radius * sin], axis=1).reshape(-1)


class TorchCpuGenerator:
    """`torch.Generator("cpu").manual_seed(seed)` followed by `torch.randn` calls, bit for bit (x86 AVX2 kernel).

    MT19937 seeded with seed mod 2³²; tensors of ≥ 16 elements use the vectorised 16-wide Box–Muller (a tail is
    recomputed from 16 fresh uniforms over the last 16 positions); smaller ones use the scalar float64 path,
    which caches every second normal in the generator across calls.
    """

    def __init__(self, seed: int):
        self._bits = np.random.MT19937()
        # RandomState's integer seeding is MT19937's init_genrand, the same as torch's manual_seed.
        self._bits.state = np.random.RandomState(int(seed) % 2**32).get_state(legacy=False)
        self._cached_normal: float | None = None

    def _words(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n).astype(np.uint32)

    def _uniform24(self, n: int) -> np.ndarray:
        return (self._words(n) & np.uint32(0xFFFFFF)).astype(_F) * _F(2.0**-24)

    def _uniform53(self) -> float:
        hi, lo = (int(w) for w in self._words(2))
        return (((hi << 32) | lo) & ((1 << 53) - 1)) * 2.0**-53

    def _scalar_normal(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1, u2 = self._uniform53(), self._uniform53()
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = math.prod(shape)
        if n < 16:
            return np.array([self._scalar_normal() for _ in range(n)], dtype=_F).reshape(tuple(shape))
        out = np.empty(n, dtype=_F)
        whole = n - n % 16
        out[:whole] = _normal_blocks(self._uniform24(n)[:whole])
        if n % 16:
            out[n - 16:] = _normal_blocks(self._uniform24(16))
        return out.reshape(tuple(shape))


# ---------------------------------------------------------------------------------------------------------------
# A1111's randn helpers and ImageRNG (A1111 modules/rng.py)


def make_generator(seed: int, source: str = "GPU", gpu_threads: int | None = None) -> Generator:
    """A fresh generator for `randn_source`; "GPU" is NV unless the imitated GPU's thread count is given."""
    if source == "NV" or (source == "GPU" and gpu_threads is None):
        return PhiloxGenerator(seed)
    if source == "GPU":
        return CudaPhiloxGenerator(seed, gpu_threads)
    if source == "CPU":
        return TorchCpuGenerator(seed)
    raise ValueError(f"unknown randn_source {source!r}; expected one of {', '.join(SOURCES)}")


def randn(seed: int, shape: Sequence[int], source: str = "GPU", gpu_threads: int | None = None) -> np.ndarray:
    """The first tensor of a fresh generator seeded with `seed` (A1111's `randn_local`)."""
    return make_generator(seed, source, gpu_threads).randn(shape)


def slerp(val: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A1111's variation-seed slerp of two (C, h, w) noises, quirks kept (A1111 modules/rng.py: slerp).

    Norms and dot products run over axis 1 (h) only, per (c, w) column; the nearly-parallel fallback weighs
    `low` by val and `high` by 1 − val, the opposite of the slerp branch.
    """
    if low.size == 0:  # "resize seed from" below 8 px: nothing to blend
        return low.astype(np.float32)
    low64, high64 = low.astype(np.float64), high.astype(np.float64)
    low_unit = low64 / np.linalg.norm(low64, axis=1, keepdims=True)
    high_unit = high64 / np.linalg.norm(high64, axis=1, keepdims=True)
    dot = (low_unit * high_unit).sum(axis=1)
    if dot.mean() > 0.9995:
        return (low64 * val + high64 * (1 - val)).astype(np.float32)
    omega = np.arccos(dot)
    so = np.sin(omega)
    res = (np.sin((1.0 - val) * omega) / so)[:, None] * low64 + (np.sin(val * omega) / so)[:, None] * high64
    return res.astype(np.float32)


def paste_centered(canvas: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """`noise` (C, h0, w0) centred on a copy of `canvas` (C, H, W), cropped where larger (A1111
    modules/rng.py: ImageRNG.first)."""
    (_, height, width), (_, h0, w0) = canvas.shape, noise.shape
    dx, dy = (width - w0) // 2, (height - h0) // 2
    w = w0 if dx >= 0 else w0 + 2 * dx
    h = h0 if dy >= 0 else h0 + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    out = canvas.copy()
    out[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return out


@dataclass
class ImageRNG:
    """One generator per image; `first()` gives the initial noise, `next()` the per-step sampler noise.

    Batch composition never changes an image's noise: each image draws from its own seeded stream.
    `subseeds` pair with `seeds` (subseed 0 where the list is short); seed resizing applies only when both
    `seed_resize_from_h/w` are > 0 and give a latent shape different from `shape`.
    """

    shape: tuple[int, ...]
    seeds: Sequence[int]
    source: str = "GPU"
    eta_noise_seed_delta: int = 0
    subseeds: Sequence[int] = ()
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    gpu_threads: int | None = None
    generators: list[Generator] = field(init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape)
        self.generators = [self._generator(s) for s in self.seeds]
        self.is_first = True

    def _generator(self, seed: int) -> Generator:
        return make_generator(seed, self.source, self.gpu_threads)

    def noise_shape(self) -> tuple[int, ...]:
        """The shape the seeds' noise is drawn at: A1111 floors the "resize seed from" size to latents."""
        if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0:
            return self.shape
        return (self.shape[0], int(self.seed_resize_from_h) // 8, int(self.seed_resize_from_w) // 8)

    def _first_noise(self, i: int, seed: int) -> np.ndarray:
        noise_shape = self.noise_shape()
        resized = noise_shape != self.shape
        # Resized noise comes from a fresh generator; otherwise it is the first draw of the image's own stream.
        noise = randn(seed, noise_shape, self.source, self.gpu_threads) if resized else (
            self.generators[i].randn(self.shape))
        if self.subseed_strength != 0:
            subseed = self.subseeds[i] if i < len(self.subseeds) else 0
            noise = slerp(self.subseed_strength, noise, randn(subseed, noise_shape, self.source, self.gpu_threads))
        if resized:
            noise = paste_centered(self.generators[i].randn(self.shape), noise)
        return noise

    def first(self) -> np.ndarray:
        noise = np.stack([self._first_noise(i, seed) for i, seed in enumerate(self.seeds)])
        if self.eta_noise_seed_delta:
            self.generators = [self._generator(s + self.eta_noise_seed_delta) for s in self.seeds]
        self.is_first = False
        return noise

    def next(self) -> np.ndarray:
        if self.is_first:
            return self.first()
        return np.stack([g.randn(self.shape) for g in self.generators])

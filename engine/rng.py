"""Seeded noise as A1111 draws it: the NV source (Philox 4x32-10 + Box–Muller) and per-image generators.

A1111's default source "GPU" is torch's CUDA generator; "NV" is A1111's own NumPy re-implementation of it and
equals "GPU" for latents up to the GPU's thread count (a1111-sampling.md §6.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = np.uint32(0x9E3779B9)
_PHILOX_W1 = np.uint32(0xBB67AE85)
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Ten Philox rounds over a (4, n) uint32 counter with a (2, n) uint32 key."""
    c = counter.copy()
    k = key.copy()
    for round_no in range(10):
        p0 = c[0].astype(np.uint64) * _PHILOX_M0
        p1 = c[2].astype(np.uint64) * _PHILOX_M1
        c0 = (p1 >> np.uint64(32)).astype(np.uint32) ^ c[1] ^ k[0]
        c1 = p1.astype(np.uint32)
        c2 = (p0 >> np.uint64(32)).astype(np.uint32) ^ c[3] ^ k[1]
        c3 = p0.astype(np.uint32)
        c = np.stack([c0, c1, c2, c3])
        if round_no < 9:
            k = np.stack([k[0] + _PHILOX_W0, k[1] + _PHILOX_W1])
    return c


def _box_muller(g0: np.ndarray, g1: np.ndarray) -> np.ndarray:
    # uint32 x float32 promotes to float64, as in A1111's module; the result is cast to float32.
    u = g0 * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = g1 * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A1111's "NV" generator: counter (offset, 0, i, 0), key = the 64-bit seed; offset +1 per call."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape))
        with np.errstate(over="ignore"):
            counter = np.zeros((4, n), dtype=np.uint32)
            counter[0] = self.offset
            counter[2] = np.arange(n, dtype=np.uint32)
            key = np.empty((2, n), dtype=np.uint32)
            key[0] = self.seed & 0xFFFFFFFF
            key[1] = (self.seed >> 32) & 0xFFFFFFFF
            g = _philox4x32_10(counter, key)
        self.offset += 1
        return _box_muller(g[0], g[1]).reshape(tuple(shape))


def make_generator(seed: int, source: str = "GPU"):
    """A per-image generator for A1111's option `randn_source` ("GPU" and "NV" share the Philox stream)."""
    if source in ("GPU", "NV"):
        return PhiloxGenerator(seed)
    raise ValueError(f"unknown randn_source {source!r}")


@dataclass
class ImageRNG:
    """One generator per image; `first()` gives the initial noise, `next()` the per-step sampler noise.

    Batch composition never changes an image's noise: each image draws from its own seeded stream.
    """

    shape: tuple[int, ...]
    seeds: Sequence[int]
    source: str = "GPU"
    eta_noise_seed_delta: int = 0

    def __post_init__(self) -> None:
        self.generators = [make_generator(s, self.source) for s in self.seeds]
        self.is_first = True

    def first(self) -> np.ndarray:
        noise = np.stack([g.randn(self.shape) for g in self.generators])
        if self.eta_noise_seed_delta:
            self.generators = [make_generator(s + self.eta_noise_seed_delta, self.source) for s in self.seeds]
        self.is_first = False
        return noise

    def next(self) -> np.ndarray:
        if self.is_first:
            return self.first()
        return np.stack([g.randn(self.shape) for g in self.generators])

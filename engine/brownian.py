"""Brownian-tree noise for the SDE samplers: torchsde 0.2.6's `BrownianTree` in NumPy (A1111
k_diffusion/sampling.py: BrownianTreeNoiseSampler, modules/sd_samplers_common.py: torchsde_randn).

The tree is a dyadic split of [σ_lo, σ_hi] whose node draws are seeded by `SeedSequence` from the image's seed,
so the noise depends only on the seed and the queried interval, never on query order or batch composition.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.rng import randn

_F = np.float32


@dataclass
class _Node:
    """A tree interval [start, end] (rounded); `key`/`depth` name its SeedSequence spawn key once it splits."""

    start: float
    end: float
    parent: _Node | None
    is_left: bool
    key: int = 0
    depth: int = 0
    midway: float | None = None
    w_seed: int = 0
    left: _Node | None = None
    right: _Node | None = None


class BrownianTree:
    """torchsde's `BrownianTree(t0, w0=zeros(shape), t1, entropy, tol, pool_size)` without Lévy area.

    `randn(seed)` is the normal draw of a node seed (A1111 routes it to the first tensor of a fresh generator of
    the active randn_source). Arithmetic on increments is float32 with float64 scalars rounded to float32, as
    torch does, so results equal torchsde's for the same `randn`.
    """

    def __init__(
        self,
        t0: float,
        t1: float,
        entropy: int,
        randn: Callable[[int], np.ndarray],
        tol: float = 1e-6,
        pool_size: int = 24,
        cache_size: int = 128,
    ):
        t0, t1 = float(t0), float(t1)
        if not t0 < t1:
            raise ValueError(f"need t0 < t1, got {t0} and {t1}")
        self.entropy = int(entropy) % 2**64  # SeedSequence rejects negative entropy
        self.randn = randn
        self.pool_size = pool_size
        self.ndigits = -int(math.log10(tol))
        self.root = _Node(self._round(t0), self._round(t1), None, False)
        w_seed, _h_seed, _a_seed = np.random.SeedSequence(self.entropy, pool_size=pool_size).generate_state(3)
        self.root_w = randn(int(w_seed)) * _F(math.sqrt(t1 - t0))
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _round(self, t: float) -> float:
        return round(t, self.ndigits)

    def __call__(self, ta: float, tb: float) -> np.ndarray:
        """W(tb) − W(ta) for ta ≤ tb, both clamped into the tree's interval."""
        ta = min(max(float(ta), self.root.start), self.root.end)
        tb = min(max(float(tb), self.root.start), self.root.end)
        if ta > tb:
            raise ValueError(f"query needs ta <= tb, got {ta} and {tb}")
        ta, tb = self._round(ta), self._round(tb)
        if ta == tb:
            return np.zeros_like(self.root_w)
        nodes: list[_Node] = []
        self._locate(self.root, ta, tb, nodes)
        w = self._increment(nodes[0])
        for node in nodes[1:]:
            w = w + self._increment(node)
        return w

    def _locate(self, node: _Node, ta: float, tb: float, out: list[_Node]) -> None:
        """Append the canonical dyadic nodes covering [ta, tb], left to right, splitting nodes as needed."""
        if ta == node.start and tb == node.end:
            out.append(node)
            return
        left, right = self._split(node)
        if tb <= node.midway:
            self._locate(left, ta, tb, out)
        elif ta >= node.midway:
            self._locate(right, ta, tb, out)
        else:
            self._locate(left, ta, node.midway, out)
            self._locate(right, node.midway, tb, out)

    def _split(self, node: _Node) -> tuple[_Node, _Node]:
        if node.left is None or node.right is None:
            node.midway = self._round(0.5 * (node.start + node.end))
            if not node.start < node.midway < node.end:
                raise ValueError(f"interval [{node.start}, {node.end}] is below the tree's resolution")
            if node.parent is not None:
                node.key = 2 * node.parent.key + (0 if node.is_left else 1)
                node.depth = node.parent.depth + 1
            seeds = np.random.SeedSequence(
                self.entropy, spawn_key=(node.key, node.depth), pool_size=self.pool_size
            ).generate_state(4)
            node.w_seed = int(seeds[0])
            node.left = _Node(node.start, node.midway, node, True)
            node.right = _Node(node.midway, node.end, node, False)
        return node.left, node.right

    def _increment(self, node: _Node) -> np.ndarray:
        """W over the node: its half of the Brownian-bridge split of the parent's increment."""
        parent = node.parent
        if parent is None:
            return self.root_w
        return self._halves(parent)[0 if node.is_left else 1]

    def _halves(self, node: _Node) -> tuple[np.ndarray, np.ndarray]:
        """The increments of a split node's children; both come from the node's one seeded draw."""
        cache_key = (node.key, node.depth)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        w = self._increment(node)
        h_reciprocal = 1 / (node.end - node.start)
        left_diff = node.midway - node.start
        right_diff = node.end - node.midway
        mean = _F(left_diff) * w * _F(h_reciprocal)
        std = _F(math.sqrt(left_diff * right_diff * h_reciprocal))
        w_left = mean + std * self.randn(node.w_seed)
        halves = (w_left, w - w_left)
        self._cache[cache_key] = halves
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return halves


NoiseSampler = Callable[[float, float], np.ndarray]


def brownian_noise_sampler(
    x_shape: Sequence[int],
    sigmas: np.ndarray | Sequence[float],
    seeds: Sequence[int],
    source: str = "GPU",
    gpu_threads: int | None = None,
) -> NoiseSampler:
    """k-diffusion's `BrownianTreeNoiseSampler` with one tree per image seed, as A1111 builds it.

    The trees span [min positive σ, max σ] of the full schedule; `noise(σa, σb)` is
    (W(σb) − W(σa)) / sqrt|σb − σa| per image, stacked to `x_shape` (B, C, h, w). Times are float32, as the
    sampler's sigmas are.
    """
    batch, *image_shape = x_shape
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    s = np.asarray(sigmas, dtype=_F)
    sigma_lo, sigma_hi = float(s[s > 0].min()), float(s.max())

    def node_noise(seed: int) -> np.ndarray:
        return randn(seed, image_shape, source, gpu_threads)

    trees = [BrownianTree(sigma_lo, sigma_hi, seed, node_noise) for seed in seeds]

    def noise(sigma: float, sigma_next: float) -> np.ndarray:
        a, b = _F(sigma), _F(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        w = np.stack([tree(float(lo), float(hi)) for tree in trees])
        return (w * _F(sign)) / np.sqrt(np.abs(b - a))

    return noise

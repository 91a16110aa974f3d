"""A generation request as the engine sees it: a small immutable plan, built before any tensor work."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationPlan:
    """Everything the pipeline needs for one txt2img job; every value already resolved.

    `prompts`, `negative_prompts`, `seeds` and `subseeds` have one entry per image (batch_size × n_iter).
    `sigmas` is the full schedule of the sampler (steps + 1 values, ending in 0 for most schedulers).
    """

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str
    sigmas: tuple[float, ...]
    batch_size: int = 1
    n_iter: int = 1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    clip_skip: int = 1
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    randn_source: str = "GPU"
    eta_noise_seed_delta: int = 0

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def batch(self, n: int) -> slice:
        """The image indices of batch iteration n."""
        return slice(n * self.batch_size, (n + 1) * self.batch_size)

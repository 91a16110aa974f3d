"""sdapi request → engine plan: the one place a request field is interpreted (a1111-api.md §3, §6)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from engine.plan import GenerationPlan
from service.errors import InvalidRequest
from service.sampler_names import resolve_sampler
from service.sdapi_models import GenerationRequest, Txt2ImgRequest

MAX_SEED = 4294967294  # A1111: random.randrange(4294967294)
MAX_SIDE = 8192
MAX_IMAGES = 64


def random_seed() -> int:
    return random.randrange(MAX_SEED)


def resolve_seed(seed: int | None) -> int:
    return random_seed() if seed is None or seed == -1 else int(seed)


def _positive_multiple_of_8(field: str, value: int | None, default: int) -> int:
    value = default if value is None else value
    if value <= 0 or value % 8 or value > MAX_SIDE:
        raise InvalidRequest(field, f"must be a positive multiple of 8 up to {MAX_SIDE}, got {value}")
    return value


def _at_least(field: str, value: int | None, default: int, minimum: int, maximum: int | None = None) -> int:
    value = default if value is None else value
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidRequest(field, f"must be {bound}, got {value}")
    return value


def _finite(field: str, value: float | None, default: float) -> float:
    value = default if value is None else float(value)
    if not math.isfinite(value):
        raise InvalidRequest(field, f"must be a finite number, got {value}")
    return value


def seeds_for(req: GenerationRequest, count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """all_seeds and all_subseeds (§6.1): seed + i, but every image gets `seed` when subseed_strength > 0."""
    seed = resolve_seed(req.seed)
    subseed = resolve_seed(req.subseed)
    strength = req.subseed_strength or 0.0
    seeds = tuple(seed if strength > 0 else seed + i for i in range(count))
    subseeds = tuple(subseed + i for i in range(count))
    return seeds, subseeds


def plan_txt2img(req: Txt2ImgRequest, options: Mapping[str, Any], sigmas_for) -> GenerationPlan:
    """Validate and resolve a txt2img request. `sigmas_for(sampler, scheduler, steps)` comes from the model."""
    width = _positive_multiple_of_8("width", req.width, 512)
    height = _positive_multiple_of_8("height", req.height, 512)
    steps = _at_least("steps", req.steps, 50, 1, 1000)
    batch_size = _at_least("batch_size", req.batch_size, 1, 1, MAX_IMAGES)
    n_iter = _at_least("n_iter", req.n_iter, 1, 1, MAX_IMAGES)
    if batch_size * n_iter > MAX_IMAGES:
        raise InvalidRequest("n_iter", f"batch_size × n_iter must be at most {MAX_IMAGES}")
    cfg_scale = _finite("cfg_scale", req.cfg_scale, 7.0)
    clip_skip = int(options.get("CLIP_stop_at_last_layers", 1))
    if not 1 <= clip_skip <= 12:
        raise InvalidRequest("CLIP_stop_at_last_layers", f"must be between 1 and 12, got {clip_skip}")
    sampler, scheduler = resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    count = batch_size * n_iter
    seeds, subseeds = seeds_for(req, count)
    prompt = req.prompt or ""
    negative = req.negative_prompt or ""
    return GenerationPlan(
        prompts=(prompt,) * count,
        negative_prompts=(negative,) * count,
        seeds=seeds,
        subseeds=subseeds,
        subseed_strength=_finite("subseed_strength", req.subseed_strength, 0.0),
        seed_resize_from_w=req.seed_resize_from_w if req.seed_resize_from_w is not None else -1,
        seed_resize_from_h=req.seed_resize_from_h if req.seed_resize_from_h is not None else -1,
        width=width,
        height=height,
        steps=steps,
        cfg_scale=cfg_scale,
        sampler=sampler,
        scheduler=scheduler,
        sigmas=tuple(float(s) for s in sigmas_for(sampler, scheduler, steps)),
        batch_size=batch_size,
        n_iter=n_iter,
        clip_skip=clip_skip,
        eta=req.eta,
        s_churn=_option_or_request(options, "s_churn", req.s_churn, 0.0),
        s_tmin=_option_or_request(options, "s_tmin", req.s_tmin, 0.0),
        s_tmax=_option_or_request(options, "s_tmax", req.s_tmax, 0.0) or float("inf"),
        s_noise=_option_or_request(options, "s_noise", req.s_noise, 1.0),
        randn_source=str(options.get("randn_source", "GPU")),
        eta_noise_seed_delta=int(options.get("eta_noise_seed_delta", 0) or 0),
    )


def _option_or_request(options: Mapping[str, Any], key: str, requested: float | None, neutral: float) -> float:
    """A1111 quirk: the option wins when it differs from its neutral value, else the request's value."""
    option = float(options.get(key, neutral))
    if option != neutral:
        return option
    return _finite(key, requested, option)

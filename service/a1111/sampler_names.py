"""Sampler and scheduler names as A1111's API resolves them (A1111 modules/sd_samplers.py:
get_sampler_and_scheduler), and its sampler settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.samplers import SAMPLERS, SamplerSettings
from engine.schedules import SCHEDULERS, find_scheduler
from service.a1111.job_options import JobOptions

DEFAULT_SAMPLER = next(iter(SAMPLERS))  # "DPM++ 2M": what an unknown name falls back to
AUTOMATIC = SCHEDULERS["automatic"]


def get_sampler_and_scheduler(
    sampler_name: str | None, scheduler_name: str | None, convert_automatic: bool = True
) -> tuple[str, str]:
    """A1111's `get_sampler_and_scheduler`: (sampler name, scheduler label).

    A trailing " <label|name|alias>" of a scheduler is split off the sampler name and chosen over
    `scheduler_name`; matching is case-sensitive, aliases of samplers are not resolved, and an unknown sampler
    is the first one. With `convert_automatic`, the sampler's own default scheduler is reported as Automatic.
    """
    found = find_scheduler(scheduler_name) or AUTOMATIC
    name = sampler_name or DEFAULT_SAMPLER
    for scheduler in SCHEDULERS.values():
        for option in (scheduler.label, scheduler.name, *(scheduler.aliases or ())):
            if name.endswith(" " + option):
                found = scheduler
                name = name[: -(len(option) + 1)]
                break
    sampler = SAMPLERS.get(name) or SAMPLERS[DEFAULT_SAMPLER]
    if convert_automatic and sampler.default_scheduler == found.name:
        found = AUTOMATIC
    return sampler.name, found.label


def resolve_sampler(name: str | None, scheduler: str | None) -> tuple[str, str]:
    """(sampler name, scheduler name) for a request's `sampler_name or sampler_index` and `scheduler`.

    The request's `scheduler` wins when given; else the legacy suffix ("DPM++ 2M Karras") chooses; unknown
    schedulers are "automatic". Never an error: that is A1111's behaviour (A1111 modules/sd_samplers.py:
    get_sampler_and_scheduler).
    """
    sampler, label = get_sampler_and_scheduler(name, scheduler)
    requested = scheduler or (label if label != AUTOMATIC.label else None)
    sampler, label = get_sampler_and_scheduler(sampler, requested, convert_automatic=False)
    return sampler, find_scheduler(label).name


def sampler_settings(options: Mapping[str, Any], s_min_uncond: float | None = None) -> SamplerSettings:
    """The sampler settings among A1111's options (A1111 modules/shared_options.py); `s_min_uncond` is the
    request's value."""
    return JobOptions.of(options).sampler_settings(s_min_uncond)


def sampler_items() -> list[dict[str, Any]]:
    """`GET /sdapi/v1/samplers`: every sampler in A1111's order, options stringified as A1111's model does."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
        for s in SAMPLERS.values()
    ]


def scheduler_items() -> list[dict[str, Any]]:
    """`GET /sdapi/v1/schedulers` in A1111's order."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) if s.aliases is not None else None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULERS.values()
    ]

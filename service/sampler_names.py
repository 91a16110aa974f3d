"""Sampler and scheduler names as A1111's API resolves them (a1111-api.md §6.2), and its sampler settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.samplers import SAMPLERS, SamplerSettings
from engine.schedules import SCHEDULERS, ScheduleOptions, find_scheduler

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
    schedulers are "automatic". Never an error: that is A1111's behaviour (a1111-api.md §3.4).
    """
    sampler, label = get_sampler_and_scheduler(name, scheduler)
    requested = scheduler or (label if label != AUTOMATIC.label else None)
    sampler, label = get_sampler_and_scheduler(sampler, requested, convert_automatic=False)
    return sampler, find_scheduler(label).name


def sampler_settings(options: Mapping[str, Any], s_min_uncond: float | None = None) -> SamplerSettings:
    """The sampler settings among A1111's options (a1111-api.md §9.4); `s_min_uncond` is the request's value."""
    defaults = SamplerSettings()
    schedule = ScheduleOptions()

    def get(key: str, default, kind=float):
        value = options.get(key)
        return default if value is None else kind(value)

    return SamplerSettings(
        eta_ancestral=get("eta_ancestral", defaults.eta_ancestral),
        eta_ddim=get("eta_ddim", defaults.eta_ddim),
        s_min_uncond=float(s_min_uncond) if s_min_uncond is not None else get("s_min_uncond", 0.0),
        s_min_uncond_all=get("s_min_uncond_all", False, bool),
        always_discard_next_to_last_sigma=get("always_discard_next_to_last_sigma", False, bool),
        uni_pc_variant=get("uni_pc_variant", defaults.uni_pc_variant, str),
        uni_pc_skip_type=get("uni_pc_skip_type", defaults.uni_pc_skip_type, str),
        uni_pc_order=get("uni_pc_order", defaults.uni_pc_order, int),
        uni_pc_lower_order_final=get("uni_pc_lower_order_final", defaults.uni_pc_lower_order_final, bool),
        schedule=ScheduleOptions(
            sigma_min=get("sigma_min", schedule.sigma_min),
            sigma_max=get("sigma_max", schedule.sigma_max),
            rho=get("rho", schedule.rho),
            beta_alpha=get("beta_dist_alpha", schedule.beta_alpha),
            beta_beta=get("beta_dist_beta", schedule.beta_beta),
            old_karras_sigmas=get("use_old_karras_scheduler_sigmas", False, bool),
        ),
        skip_early_cond=get("skip_early_cond", defaults.skip_early_cond),
        img2img_extra_noise=get("img2img_extra_noise", defaults.img2img_extra_noise),
        sgm_noise_multiplier=get("sgm_noise_multiplier", defaults.sgm_noise_multiplier, bool),
        noise_schedule=get("sd_noise_schedule", defaults.noise_schedule, str),
    )


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

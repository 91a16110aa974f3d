"""Sampler and scheduler names as the API resolves them (a1111-api.md §6.2)."""

from __future__ import annotations

from engine.samplers import SAMPLERS
from engine.schedules import SCHEDULERS


def _scheduler_by_name_or_label(value: str | None) -> str | None:
    for spec in SCHEDULERS.values():
        if value in (spec.name, spec.label):
            return spec.name
    return None


def resolve_sampler(name: str | None, scheduler: str | None) -> tuple[str, str]:
    """(sampler name, scheduler name) for a request's `sampler_name or sampler_index` and `scheduler`.

    A legacy suffix ("DPM++ 2M Karras") selects the scheduler; an unknown sampler falls back to the first one
    (A1111 never errors); an unknown scheduler becomes "automatic"; a scheduler equal to the sampler's own
    default is reported as "automatic".
    """
    name = name or ""
    chosen = _scheduler_by_name_or_label(scheduler) or "automatic"
    for spec in SCHEDULERS.values():
        suffixes = [spec.label, spec.name, *(spec.aliases or ())]
        match = next((s for s in suffixes if name.endswith(" " + s)), None)
        if match is not None:
            name = name[: -len(match) - 1]
            if scheduler is None:
                chosen = spec.name
            break
    sampler = name if name in SAMPLERS else next(iter(SAMPLERS))
    if chosen == SAMPLERS[sampler].default_scheduler:
        chosen = "automatic"
    return sampler, chosen

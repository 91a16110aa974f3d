"""What a plan's schedule resolves to on a model: the σ tuple plans carried before the pipeline resolved it."""

from __future__ import annotations

from engine.plan import GenerationPlan


def plan_sigmas(pipeline, plan: GenerationPlan, hires: bool = False) -> tuple[float, ...]:
    """The σ `pipeline` walks for the plan's first pass (or its hires pass)."""
    spec = plan.hires_schedule if hires else plan.schedule
    return tuple(float(s) for s in pipeline.resolve_schedule(spec).sigmas)

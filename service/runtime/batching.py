"""Batching of compatible queued jobs (`--batch-max N`, `--batch-window-ms`): the worker's job takes waiting
jobs that differ from it only in their seeds into one pass through the UNet; each job keeps its own seeds, noise,
progress, interrupt and result.

Compatible = same checkpoint, same plan in every field except the per-image seeds and subseeds and the batch size
(size, sampler, scheduler, steps, CFG, options...), the same prompt and negative prompt, txt2img without hires,
`n_iter` 1. The engine draws every image's noise from its own seed and the CPU UNet computes each row of a batch
as it computes that row alone, so each job's images are byte-identical to running it alone
(tests/service/runtime/test_batching.py). Different prompts are not batched: a batch's conditioning is padded to its
longest prompt (A1111's batches do this too), which would change a shorter prompt's images.

A member interrupted (or skipped, or cancelled) alone leaves the batch at once: its rows of the last denoised
prediction are decoded, as an interrupted job's are; the lead's client is answered when the batch ends.
/sdapi/v1/interrupt stops the whole batch, as it stops whatever runs in A1111.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engine.backend import release_memory
from engine.pipeline import GenerationResult, StepEvent
from service.a1111.errors import JobTooLarge
from service.runtime import admission
from service.runtime.jobs import Job
from service.runtime.workers import job_resources, mode_of

log = logging.getLogger(__name__)

_PER_IMAGE = {"prompts": (), "negative_prompts": (), "seeds": (), "subseeds": (), "batch_size": 0}


@dataclass(frozen=True)
class BatchConfig:
    max_images: int = 1  # images one batch may hold (--batch-max); 1 = batching off
    window_s: float = 0.0  # how long the worker waits for companions (--batch-window-ms); 0 = only those waiting

    @property
    def enabled(self) -> bool:
        return self.max_images > 1


def batchable(generation: Any) -> bool:
    """A plain txt2img job: what a job does besides sampling (LoRA sessions, a VAE file, tiled sessions, face
    restoration, saving) happens in `Generation.run_alone`, so jobs that need any of it run alone."""
    plan = generation.plan
    save = getattr(generation, "save", None)
    return (plan.n_iter == 1 and plan.hires is None and plan.img2img is None and generation.hires is None
            and generation.req.override_settings_restore_afterwards is not False
            and not getattr(plan, "networks", ()) and not getattr(plan, "tiling", False)
            and getattr(generation, "vae", None) is None and not plan.report.restore_faces
            and not (save is not None and (save.samples or save.grid)))


def compatible(lead: Any, other: Any) -> bool:
    """`other` can run in `lead`'s batch with images byte-identical to running alone."""
    if type(other) is not type(lead) or not batchable(other) or other.entry != lead.entry:
        return False
    a, b = lead.plan, other.plan
    if set(a.prompts) | set(b.prompts) != {a.prompts[0]}:
        return False
    if set(a.negative_prompts) | set(b.negative_prompts) != {a.negative_prompts[0]}:
        return False
    try:
        return bool(replace(a, **_PER_IMAGE) == replace(b, **_PER_IMAGE))
    except (ValueError, TypeError):  # a field whose == is not a bool (an array): not provably the same
        return False


def merged_plan(plans: list) -> Any:
    first = plans[0]
    return replace(first, prompts=sum((p.prompts for p in plans), ()),
                   negative_prompts=sum((p.negative_prompts for p in plans), ()),
                   seeds=sum((p.seeds for p in plans), ()), subseeds=sum((p.subseeds for p in plans), ()),
                   batch_size=sum(p.batch_size for p in plans))


@dataclass
class _Member:
    job: Job
    generation: Any
    rows: slice
    result: GenerationResult | None = None
    left: bool = False
    on_step: Any = None
    extra: dict = field(default_factory=dict)


class Batcher:
    def __init__(self, state, config: BatchConfig):
        self.state = state
        self.config = config

    def run(self, lead: Any, job: Job, progress_hook) -> GenerationResult:
        """On the worker, for `lead` (the job the queue handed it): gather companions, run them all, hand each
        its result. Returns the lead's result; the others end through the queue's `finish_rider`."""
        queue = self.state.queue
        images = lead.plan.batch_size

        def accept(taken: list[Job], candidate: Job) -> bool:
            other = candidate.payload
            if other is None or not compatible(lead, other):
                return False
            if images + sum(j.payload.plan.batch_size for j in taken) + other.plan.batch_size > self.config.max_images:
                return False
            plans = [lead.plan, *(j.payload.plan for j in taken), other.plan]
            try:  # the batch must fit the memory budget as one job
                admission.check(self.state, lead.entry, merged_plan(plans))
            except JobTooLarge:
                return False
            return True

        riders = queue.take_riders(job, accept, self.config.max_images - 1, self.config.window_s) \
            if batchable(lead) else []
        if not riders:
            return lead.run_alone(job)
        members, start = [], 0
        for member_job, generation in [(job, lead), *((r, r.payload) for r in riders)]:
            n = generation.plan.batch_size
            members.append(_Member(member_job, generation, slice(start, start + n)))
            start += n
        log.info("batch of %d jobs (%d images): %s", len(members), start, ", ".join(m.job.id for m in members),
                 extra={"event": "batch", "task_ids": ",".join(m.job.id for m in members), "images": start})
        try:
            self._run(members, progress_hook)
        except BaseException as exc:
            for member in members[1:]:
                if not member.left:
                    queue.finish_rider(member.job, None, exc)
            raise
        for member in members[1:]:
            if not member.left:
                queue.finish_rider(member.job, member.result, None)
        assert members[0].result is not None
        return members[0].result

    def _run(self, members: list[_Member], progress_hook) -> None:
        lead = members[0].generation
        plan = merged_plan([m.generation.plan for m in members])
        needed = admission.check(self.state, lead.entry, plan)
        # The batch is one job to the others, held by its lead.
        with job_resources(self.state, [lead.entry], mode_of(lead), needed, members[0].job):
            self._run_batch(members, progress_hook, plan, needed)

    def _run_batch(self, members: list[_Member], progress_hook, plan, needed: int) -> None:
        lead = members[0].generation
        metrics = self.state.metrics
        pipeline = self.state.pipeline_for(lead.entry)
        for member in members:
            member.generation.note_embeddings(pipeline)
        admission.wait_for_memory(needed)
        for member in members:
            member.job.progress.job_count = 1
            member.on_step = progress_hook(member.job)
        last: dict[str, np.ndarray | None] = {"latents": None}

        def leave(member: _Member) -> None:
            """The member stops here: its rows of the last prediction, decoded, are its (interrupted) result."""
            latents = last["latents"]
            rows = latents[member.rows] if latents is not None else np.zeros((0,))
            images = pipeline._decode(rows) if latents is not None else []  # as the pipeline decodes an interrupt
            member.result = GenerationResult(images=images, latents=list(rows), interrupted=True,
                                             is_using_inpainting_conditioning=pipeline.manifest.is_inpainting)
            member.left = True
            metrics.images.inc(len(images))
            if member is not members[0]:
                self.state.queue.finish_rider(member.job, member.result, None)

        def on_step(event: StepEvent) -> None:
            last["latents"] = event.latents
            for member in members:
                if not member.left:
                    member.on_step(replace(event, latents=event.latents[member.rows]))

        def should_stop() -> bool:
            for member in members:
                if not member.left and member.job.should_stop():
                    leave(member)
            return all(member.left for member in members)

        started = time.perf_counter()
        try:
            result = pipeline.txt2img(plan, on_step=metrics.timed_steps(on_step), should_stop=should_stop)
        finally:
            release_memory()
        for member in members:
            if not member.left:
                rows = member.rows
                member.result = replace(result, images=result.images[rows], latents=result.latents[rows],
                                        interrupted=False)
                metrics.images.inc(len(member.result.images))
        log.debug("batch ran in %.3f s", time.perf_counter() - started)

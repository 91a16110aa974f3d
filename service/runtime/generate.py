"""The one generation path both front doors take: sdapi request → plan → queued job → sdapi response.

REST (service/http/routes/generation.py) and gRPC (service/rpc/server.py) differ only in how they wait for the job
and how they ship the response; everything a request means is decided here and in service/a1111/translate.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.backend import release_memory
from engine.pipeline import GenerationResult, StepEvent
from engine.plan import GenerationPlan
from service.a1111.errors import InvalidRequest, ModelUnavailable, QueueBusy
from service.a1111.infotext_request import Request, apply_infotext
from service.a1111.job_options import JobOptions
from service.a1111.results import build_response
from service.a1111.sdapi_models import GenerationRequest, Img2ImgRequest
from service.a1111.styles import styles_of
from service.a1111.translate import hires_checkpoint, plan_img2img, plan_txt2img
from service.runtime import admission, face_restoration
from service.runtime.jobs import Job, QueueFull, new_task_id
from service.runtime.models import ModelEntry
from service.runtime.options import InvalidOption
from service.runtime.state import NoModelLoaded, ServerState

Listener = Callable[[Job], None]
Finish = Callable[..., dict[str, Any]]


def job_options(state: ServerState, overrides: dict | None) -> JobOptions:
    try:
        return state.job_options(overrides)
    except KeyError as exc:
        raise InvalidRequest("override_settings", f"unknown option {exc.args[0]!r}") from None
    except InvalidOption as exc:
        raise InvalidRequest("override_settings", str(exc)) from None


def checkpoint(state: ServerState, options: JobOptions) -> ModelEntry:
    try:
        return state.checkpoint_for(options)
    except NoModelLoaded as exc:
        raise ModelUnavailable(str(exc)) from None


def progress_hook(job: Job) -> Callable[[StepEvent], None]:
    def on_step(event: StepEvent) -> None:
        p = job.progress
        p.job_no, p.job_count = event.job_no, event.job_count
        p.sampling_step, p.sampling_steps = event.step, event.steps
        p.latents = event.latents
        job.notify()

    return on_step


def enqueue(state: ServerState, job: Job, listener: Listener | None = None) -> Job:
    # The listener is attached before the job can start, so it sees every step.
    if listener is not None:
        job.listeners.append(listener)
    try:
        return state.queue.submit(job)
    except QueueFull as exc:
        raise QueueBusy(str(exc)) from None


@dataclass(frozen=True)
class Generation:
    """A request planned once, at submit time: the worker runs its plan, `finish` builds its response."""

    state: ServerState
    req: GenerationRequest
    plan: GenerationPlan
    entry: ModelEntry
    hires: ModelEntry | None  # hr_checkpoint_name's checkpoint, when not the job's own
    options: JobOptions  # built once at submit: server options + the request's override_settings
    parameters: dict[str, Any]
    needed: int  # admission's estimate of the job's memory
    timestamp: str

    def run(self, job: Job) -> GenerationResult:
        """On the worker: model switches happen in queue order; each pipeline resolves the plan's schedules."""
        if self.hires is None:
            pipeline, hires_pipeline = self.state.pipeline_for(self.entry), None
        else:
            pipeline, hires_pipeline = self.state.hires_pipelines_for(self.entry, self.hires)
        admission.wait_for_memory(self.needed)  # fits the budget; waits while other processes hold the memory
        plan, on_step = self.plan, progress_hook(job)
        job.progress.job_count = plan.n_iter * (2 if plan.hires else 1)  # hires: A1111 counts both passes
        try:
            if plan.img2img is not None:
                result = pipeline.img2img(plan, on_step=on_step, should_stop=job.should_stop)
            else:
                result = pipeline.txt2img(plan, on_step=on_step, should_stop=job.should_stop,
                                          hires_pipeline=hires_pipeline)
        finally:
            release_memory()  # a large job's freed buffers go back to the OS
        if self.req.override_settings_restore_afterwards is False:
            self.state.keep_overrides(self.req.override_settings, self.entry)
        return result

    def finish(self, result: GenerationResult, as_bytes: bool = False) -> dict[str, Any]:
        return build_response(self.plan, result, self.entry, self.options, self.parameters,
                              bool(self.req.send_images), self.timestamp, as_bytes=as_bytes)


def submit(state: ServerState, req: GenerationRequest, listener: Listener | None = None) -> tuple[Job, Finish]:
    """Validate and plan a txt2img or img2img request once (a bad request is refused before it queues), queue
    it, and return the job with `finish(result, as_bytes=False)`, which builds the sdapi response."""
    req = with_infotext(state, req)
    options = job_options(state, req.override_settings)
    entry = checkpoint(state, options)
    parameters = req.model_dump()
    hires = None
    if isinstance(req, Img2ImgRequest):
        kind, plan = "img2img", plan_img2img(req, options, entry.edit_model, styles_of(state))
        if not req.include_init_images:
            parameters.update(init_images=None, mask=None)
    else:
        hires = hires_checkpoint(req, state.models, entry)
        kind, plan = "txt2img", plan_txt2img(req, options, state.upscalers, styles_of(state), hires)
    plan = face_restoration.attach(getattr(state, "face_restorers", None), plan)
    needed = admission.check(state, entry, plan)  # 413 if it can never fit the memory budget
    generation = Generation(state, req, plan, entry, hires, options, parameters, needed,
                            time.strftime("%Y%m%d%H%M%S"))
    job = enqueue(state, Job(kind=kind, run=generation.run, id=req.force_task_id or new_task_id(kind)), listener)
    return job, generation.finish


def with_infotext(state: ServerState, req: Request) -> Request:
    """The request with its pasted `infotext` applied (A1111 modules/api/api.py: Api.apply_infotext), so plan
    and `parameters` echo both see it."""
    return apply_infotext(req, state.options.snapshot(), styles_of(state).extract_styles,
                          lambda name: getattr(state.models.find(name), "title", None))

"""The one generation path both front doors take: sdapi request → plan → queued job → sdapi response.

REST (service/routes/generation.py) and gRPC (service/grpc_server.py) differ only in how they wait for the job
and how they ship the response; everything a request means is decided here and in service/translate.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

from engine.backend import release_memory
from engine.pipeline import GenerationResult, StepEvent
from service import admission
from service.errors import InvalidRequest
from service.infotext_request import Request, apply_infotext
from service.jobs import Job, QueueFull, new_task_id
from service.models import ModelEntry
from service.options import InvalidOption
from service.results import build_response
from service.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from service.state import NoModelLoaded, ServerState, placeholder_sigmas
from service.styles import styles_of
from service.translate import hires_checkpoint, plan_img2img, plan_txt2img

Listener = Callable[[Job], None]
Finish = Callable[..., dict[str, Any]]


class ModelUnavailable(HTTPException):
    """No checkpoint can be loaded: REST 503, gRPC UNAVAILABLE."""

    def __init__(self, detail: str):
        super().__init__(status_code=503, detail=detail)


class QueueBusy(HTTPException):
    """The queue is full: REST 503 with Retry-After, gRPC RESOURCE_EXHAUSTED."""

    def __init__(self, detail: str):
        super().__init__(status_code=503, detail=detail, headers={"Retry-After": "5"})


def job_options(state: ServerState, overrides: dict | None) -> dict:
    try:
        return state.job_options(overrides)
    except KeyError as exc:
        raise InvalidRequest("override_settings", f"unknown option {exc.args[0]!r}") from None
    except InvalidOption as exc:
        raise InvalidRequest("override_settings", str(exc)) from None


def checkpoint(state: ServerState, options: dict) -> ModelEntry:
    try:
        return state.checkpoint_for(options)
    except NoModelLoaded as exc:
        raise ModelUnavailable(str(exc)) from None


def loaded_sigmas(state: ServerState, entry: ModelEntry):
    """The schedule source for planning at request time: the model's own if it is loaded, else a stand-in
    (the job plans again once the worker has loaded the model)."""
    loaded = state.models.loaded
    return loaded[1].sigmas if loaded is not None and loaded[0] == entry else placeholder_sigmas


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


def _submit(state: ServerState, req: Txt2ImgRequest | Img2ImgRequest, kind: str, make_plan: Callable,
            run_pipeline: Callable, parameters: dict[str, Any], listener: Listener | None,
            hires_for: Callable[[ModelEntry], ModelEntry | None] | None = None) -> tuple[Job, Finish]:
    """The shared path: plan at request time (a bad request is refused before it queues), plan again on the
    worker if the model was not loaded yet, run, and build the response with `finish(result, as_bytes)`.
    `hires_for(entry)` names another checkpoint for the hires pass (txt2img's hr_checkpoint_name)."""
    options = job_options(state, req.override_settings)
    entry = checkpoint(state, options)
    hires = hires_for(entry) if hires_for is not None else None
    sigmas = loaded_sigmas(state, entry)
    loaded = state.models.loaded
    plan = make_plan(options, sigmas, loaded[1] if loaded is not None and loaded[0] == entry else None,
                     hires, loaded_sigmas(state, hires) if hires is not None else None)
    needed = admission.check(state, entry, plan)  # 413 if it can never fit the memory budget
    timestamp = time.strftime("%Y%m%d%H%M%S")

    def run(job: Job) -> GenerationResult:
        nonlocal plan
        # On the worker: model switches happen in queue order.
        if hires is None:
            pipeline, hires_pipeline = state.pipeline_for(entry), None
        else:
            pipeline, hires_pipeline = state.hires_pipelines_for(entry, hires)
        if sigmas is placeholder_sigmas or hires_pipeline is not None:
            plan = make_plan(options, pipeline.sigmas, pipeline, hires,
                             hires_pipeline.sigmas if hires_pipeline is not None else None)
        admission.wait_for_memory(needed)  # fits the budget; waits while other processes hold the memory
        try:
            result = run_pipeline(pipeline, plan, job, hires_pipeline)
        finally:
            release_memory()  # a large job's freed buffers go back to the OS
        if req.override_settings_restore_afterwards is False:
            state.keep_overrides(req.override_settings, entry)
        return result

    job = enqueue(state, Job(kind=kind, run=run, id=req.force_task_id or new_task_id(kind)), listener)

    def finish(result: GenerationResult, as_bytes: bool = False) -> dict[str, Any]:
        return build_response(plan, result, entry, options, parameters, bool(req.send_images), timestamp,
                              req.styles, as_bytes=as_bytes)

    return job, finish


def with_infotext(state: ServerState, req: Request) -> Request:
    """The request with its pasted `infotext` applied (§6.7), so plan and `parameters` echo both see it."""
    return apply_infotext(req, state.options.snapshot(), styles_of(state).extract_styles,
                          lambda name: getattr(state.models.find(name), "title", None))


def submit_txt2img(state: ServerState, req: Txt2ImgRequest,
                   listener: Listener | None = None) -> tuple[Job, Finish]:
    """Validate, plan and queue a txt2img request; `finish(result, as_bytes=False)` builds the sdapi response."""
    req = with_infotext(state, req)

    def make_plan(options, sigmas, pipeline, hires=None, hires_sigmas=None):
        return plan_txt2img(req, options, sigmas, state.upscalers, styles_of(state), hires, hires_sigmas)

    def run_pipeline(pipeline, plan, job: Job, hires_pipeline=None) -> GenerationResult:
        job.progress.job_count = plan.n_iter * (2 if plan.hires else 1)  # hires: A1111 counts both passes
        return pipeline.txt2img(plan, on_step=progress_hook(job), should_stop=job.should_stop,
                                hires_pipeline=hires_pipeline)

    def hires_for(entry: ModelEntry) -> ModelEntry | None:
        return hires_checkpoint(req, state.models, entry)

    return _submit(state, req, "txt2img", make_plan, run_pipeline, req.model_dump(), listener, hires_for)


def _is_edit_model(pipeline) -> bool:
    return pipeline is not None and pipeline.manifest.unet_in_channels == 8


def submit_img2img(state: ServerState, req: Img2ImgRequest,
                   listener: Listener | None = None) -> tuple[Job, Finish]:
    """Validate (images decoded, mask checked), plan and queue an img2img request, like `submit_txt2img`."""
    req = with_infotext(state, req)

    def make_plan(options, sigmas, pipeline, hires=None, hires_sigmas=None):
        return plan_img2img(req, options, sigmas, _is_edit_model(pipeline), styles_of(state))

    def run_pipeline(pipeline, plan, job: Job, hires_pipeline=None) -> GenerationResult:
        job.progress.job_count = plan.n_iter
        return pipeline.img2img(plan, on_step=progress_hook(job), should_stop=job.should_stop)

    parameters = req.model_dump()
    if not req.include_init_images:
        parameters.update(init_images=None, mask=None)
    return _submit(state, req, "img2img", make_plan, run_pipeline, parameters, listener)

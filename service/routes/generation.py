"""POST /sdapi/v1/txt2img: validate → plan → queue → run on the worker → encode → respond."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from engine.pipeline import StepEvent
from service.errors import InvalidRequest
from service.jobs import Job, JobCancelled, QueueFull, new_task_id
from service.results import build_response
from service.sdapi_models import GenerationResponse, Txt2ImgRequest
from service.state import NoModelLoaded, ServerState
from service.translate import plan_txt2img

router = APIRouter()

TASK_ID_HEADER = "X-Task-Id"


def job_options(state: ServerState, overrides: dict | None) -> dict:
    try:
        return state.options.with_overrides(overrides)
    except KeyError as exc:
        raise InvalidRequest("override_settings", f"unknown option {exc.args[0]!r}") from None


def progress_hook(job: Job):
    def on_step(event: StepEvent) -> None:
        p = job.progress
        p.job_no, p.job_count = event.job_no, event.job_count
        p.sampling_step, p.sampling_steps = event.step, event.steps
        p.latents = event.latents
        job.notify()

    return on_step


async def wait_for(job: Job, state: ServerState, request: Request):
    """Await the job's result; a client that disconnects while its job is still queued removes it."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=0.5)
        if done:
            return future.result()
        if await request.is_disconnected():
            state.queue.cancel(job)
            raise JobCancelled(job.id)


def submit(state: ServerState, job: Job) -> Job:
    try:
        return state.queue.submit(job)
    except QueueFull as exc:
        raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "5"}) from None


@router.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
async def txt2img(req: Txt2ImgRequest, request: Request, response: Response):
    state: ServerState = request.app.state.sdedge
    options = job_options(state, req.override_settings)
    try:
        entry, pipeline = state.load_default()
    except NoModelLoaded as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    plan = plan_txt2img(req, options, pipeline.sigmas)
    timestamp = time.strftime("%Y%m%d%H%M%S")

    def run(job: Job):
        job.progress.job_count = plan.n_iter
        result = pipeline.txt2img(plan, on_step=progress_hook(job), should_stop=job.should_stop)
        return result

    job = submit(state, Job(kind="txt2img", run=run, id=req.force_task_id or new_task_id("txt2img")))
    response.headers[TASK_ID_HEADER] = job.id
    result = await wait_for(job, state, request)
    parameters = req.model_dump()
    return await run_in_threadpool(
        build_response, plan, result, entry, options, parameters, bool(req.send_images), timestamp, req.styles
    )

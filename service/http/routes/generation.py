"""POST /sdapi/v1/txt2img and /img2img: validate → plan → queue → run on the worker → encode → respond."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service.a1111.sdapi_models import GenerationResponse, Img2ImgRequest, Txt2ImgRequest
from service.runtime.generate import enqueue, job_options, progress_hook  # noqa: F401 (shared helpers)
from service.runtime.generate import submit as submit_generation
from service.runtime.jobs import Job, JobCancelled
from service.runtime.state import ServerState

router = APIRouter()

TASK_ID_HEADER = "X-Task-Id"


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
    return enqueue(state, job)


@router.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
async def txt2img(req: Txt2ImgRequest, request: Request, response: Response):
    state: ServerState = request.app.state.sdedge
    job, finish = submit_generation(state, req)
    response.headers[TASK_ID_HEADER] = job.id
    result = await wait_for(job, state, request)
    return await run_in_threadpool(finish, result)


@router.post("/sdapi/v1/img2img", response_model=GenerationResponse)
async def img2img(req: Img2ImgRequest, request: Request, response: Response):
    state: ServerState = request.app.state.sdedge
    # Decoding init images and masks is CPU work: off the event loop.
    job, finish = await run_in_threadpool(submit_generation, state, req)
    response.headers[TASK_ID_HEADER] = job.id
    result = await wait_for(job, state, request)
    return await run_in_threadpool(finish, result)

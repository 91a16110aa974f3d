"""Progress, interrupt and skip (A1111's sdapi and /internal routes), and sdedge's server-sent event stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from service.runtime import progress
from service.runtime.jobs import Job, JobState
from service.runtime.state import ServerState

router = APIRouter()

FINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
FINAL_STATES = {state.value for state in FINAL}  # as snapshots carry them
KEEPALIVE_SECONDS = 15.0


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class InternalProgressRequest(BaseModel):
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


class InternalProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None
    id_live_preview: int | None = None
    textinfo: str | None = None


def _state(request: Request) -> ServerState:
    return request.app.state.sdedge


def architecture(state: ServerState) -> str:
    loaded = state.models.loaded
    return progress.job_architecture(state.queue.current,
                                     loaded[1].manifest.architecture if loaded is not None else "sd1")


@router.get("/sdapi/v1/progress", response_model=ProgressResponse)
def get_progress(request: Request, skip_current_image: bool = False):
    state = _state(request)
    return progress.progress_response(state.queue, state.options.snapshot(), architecture(state),
                                      skip_current_image)


@router.post("/sdapi/v1/interrupt")
def interrupt(request: Request) -> dict:
    _state(request).queue.interrupt_current()
    return {}


@router.post("/sdapi/v1/skip")
def skip(request: Request) -> None:
    _state(request).queue.skip_current()
    return None


@router.get("/internal/ping")
def ping(request: Request) -> dict:
    """`{}` as A1111 answers; 503 while the worker is dead (until restarted) or stuck past a job's deadline."""
    if not _state(request).queue.healthy():
        raise HTTPException(status_code=503,
                            detail="the job worker is dead or stuck past a job's deadline (it is being replaced)")
    return {}


@router.post("/internal/progress", response_model=InternalProgressResponse)
def internal_progress(req: InternalProgressRequest, request: Request):
    state = _state(request)
    return progress.internal_progress(state.queue, state.options.snapshot(), architecture(state), req.id_task,
                                      req.id_live_preview, req.live_preview)


@router.get("/internal/pending-tasks")
def pending_tasks(request: Request) -> dict:
    tasks = [job.id for job in _state(request).queue.pending()]
    return {"size": len(tasks), "tasks": tasks}


@router.get("/sdedge/v1/queue")
def queue_snapshot(request: Request) -> dict:
    """sdedge: the running job, the waiting ones in order, the last finished ones, and the start order of
    recent jobs as (arrival sequence, id) pairs."""
    queue = _state(request).queue
    current = queue.current
    return {
        "current": progress.task_snapshot(queue, current) if current is not None else None,
        "running": [progress.task_snapshot(queue, job) for job in queue.running()],  # every worker's (--workers)
        "pending": [progress.task_snapshot(queue, job) for job in queue.pending()],
        "recent": [progress.task_snapshot(queue, job) for job in queue.recent()],
        "started": [list(pair) for pair in queue.started],
    }


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


class _Subscription:
    """A task's snapshots as the worker makes them, queued for one SSE client: none is lost between two reads,
    and a client that subscribes before the task is submitted sees it from its first state."""

    def __init__(self, state: ServerState, task_id: str):
        self.state = state
        self.task_id = task_id
        self.loop = asyncio.get_running_loop()
        self.snapshots: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.job: Job | None = state.queue.watch(task_id, self._listener)

    def _listener(self, job: Job) -> None:  # worker thread
        self.job = job
        snapshot = progress.task_snapshot(self.state.queue, job)
        self.loop.call_soon_threadsafe(self.snapshots.put_nowait, snapshot)

    async def submitted(self, wait: float) -> bool:
        if self.job is not None:
            return True
        try:
            first = await asyncio.wait_for(self.snapshots.get(), timeout=wait)
        except asyncio.CancelledError:
            self.close()
            raise
        except asyncio.TimeoutError:
            self.close()
            if self.job is not None:  # submitted between the timeout and close: follow it after all
                self.job = self.state.queue.watch(self.task_id, self._listener)
            return self.job is not None
        self.snapshots.put_nowait(first)  # stays the stream's first event
        return True

    def close(self) -> None:
        self.state.queue.unwatch(self.task_id, self._listener)


async def _task_events(sub: _Subscription, request: Request, previews: bool) -> AsyncIterator[str]:
    state, job = sub.state, sub.job
    assert job is not None
    try:
        last: dict | None = None
        preview_id = 0
        if sub.snapshots.empty():
            sub.snapshots.put_nowait(progress.task_snapshot(state.queue, job))
        while True:
            try:
                snapshot = await asyncio.wait_for(sub.snapshots.get(), timeout=KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                continue
            if snapshot != last:
                yield _event("progress", snapshot)
                last = snapshot
            running = snapshot["state"] == JobState.RUNNING.value
            if previews and running and job.state == JobState.RUNNING:
                options = state.options.snapshot()
                progress.refresh_preview(job, options, architecture(state))
                image = job.preview.image
                if image is not None and job.preview.id != preview_id:
                    preview_id = job.preview.id
                    fmt = str(options.get("live_previews_image_format", "png"))
                    yield _event("preview", {"id": job.id, "preview_id": preview_id, "job_no": job.preview.job_no,
                                             "step": job.preview.step, "image": progress.data_url(image, fmt)})
            if snapshot["state"] in FINAL_STATES:
                yield _event("end", {"id": job.id, "state": job.state.value, "interrupted": job.interrupted,
                                     "error": job.error})
                return
    finally:
        sub.close()


@router.get("/sdedge/v1/tasks/{task_id}/events")
async def task_events(task_id: str, request: Request, previews: bool = True,
                      wait: float = Query(10.0, ge=0.0, le=60.0)):
    """Server-sent events of one task: `progress` on every change, `preview` every
    `show_progress_every_n_steps` steps, and a final `end` (docs/api.md)."""
    sub = _Subscription(_state(request), task_id)
    if not await sub.submitted(wait):
        raise HTTPException(status_code=404, detail=f"task {task_id!r} not found")
    return StreamingResponse(_task_events(sub, request, previews), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

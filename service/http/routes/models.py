"""Checkpoints: GET /sdapi/v1/sd-models, refresh, unload and reload. Loads run on the job queue, in order."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.a1111.sdapi_models import SDModelItem
from service.runtime.generate import checkpoint, enqueue
from service.runtime.jobs import Job
from service.runtime.state import ServerState

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.sdedge


@router.get("/sdapi/v1/sd-models", response_model=list[SDModelItem])
def sd_models(request: Request):
    state = _state(request)
    return [
        SDModelItem(title=e.title, model_name=e.name, hash=e.short_hash, sha256=e.sha256,
                    filename=str(e.path), config=None)
        for e in state.models.entries()
    ]


@router.post("/sdapi/v1/refresh-checkpoints")
def refresh_checkpoints(request: Request) -> None:
    state = _state(request)
    enqueue(state, Job(kind="refresh-checkpoints", run=lambda job: state.models.refresh())).future.result()
    return None


@router.post("/sdapi/v1/unload-checkpoint")
def unload_checkpoint(request: Request) -> dict:
    # A running job keeps the pipeline it holds; the next job loads its checkpoint again.
    _state(request).models.unload()
    return {}


@router.post("/sdapi/v1/reload-checkpoint")
def reload_checkpoint(request: Request) -> dict:
    state = _state(request)
    entry = checkpoint(state, state.job_options(None))
    enqueue(state, state.switch_checkpoint(entry)).future.result()
    return {}

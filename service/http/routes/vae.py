"""Separate VAE files: GET /sdapi/v1/sd-vae and POST /sdapi/v1/refresh-vae (A1111 modules/api/api.py:
get_sd_vaes, refresh_vae). The choice itself is the option `sd_vae` (service/runtime/vae.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.runtime.generate import enqueue
from service.runtime.jobs import Job
from service.runtime.state import ServerState

router = APIRouter()


class SDVaeItem(BaseModel):
    model_name: str  # the file's basename with its extension: what `sd_vae` takes
    filename: str  # absolute path


def _state(request: Request) -> ServerState:
    return request.app.state.sdedge


@router.get("/sdapi/v1/sd-vae", response_model=list[SDVaeItem])
def sd_vae(request: Request):
    return [SDVaeItem(model_name=f.name, filename=str(f.path)) for f in _state(request).vaes.files()]


@router.post("/sdapi/v1/refresh-vae")
def refresh_vae(request: Request) -> None:
    # A1111 rescans under the queue lock; new files are then exported in the background (logged).
    state = _state(request)
    enqueue(state, Job(kind="refresh-vae", run=lambda job: state.vaes.refresh())).future.result()
    state.vaes.prebuild(state.models.entries())
    return None

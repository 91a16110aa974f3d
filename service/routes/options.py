"""GET/POST /sdapi/v1/options."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request

router = APIRouter()


@router.get("/sdapi/v1/options")
def get_options(request: Request) -> dict[str, Any]:
    return request.app.state.sdedge.options.snapshot()


@router.post("/sdapi/v1/options")
def set_options(request: Request, body: dict[str, Any] = Body(...)) -> None:
    state = request.app.state.sdedge
    checkpoint = body.get("sd_model_checkpoint")
    if checkpoint is not None and state.models.find(checkpoint) is None:
        raise HTTPException(status_code=404, detail=f"model {checkpoint!r} not found")
    try:
        state.options.update(body)
    except KeyError as exc:
        raise HTTPException(status_code=422, detail=f"unknown option {exc.args[0]!r}") from None
    return None

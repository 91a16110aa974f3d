"""Model listing: GET /sdapi/v1/sd-models."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.sdapi_models import SDModelItem

router = APIRouter()


@router.get("/sdapi/v1/sd-models", response_model=list[SDModelItem])
def sd_models(request: Request):
    state = request.app.state.sdedge
    return [
        SDModelItem(title=e.title, model_name=e.name, hash=e.short_hash, sha256=e.sha256,
                    filename=str(e.path), config=None)
        for e in state.models.entries()
    ]

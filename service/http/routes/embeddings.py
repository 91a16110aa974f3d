"""GET /sdapi/v1/embeddings and POST /refresh-embeddings (A1111 modules/api/api.py: Api.get_embeddings,
Api.refresh_embeddings); behind `--api-auth` like every core sdapi route (only the Lora extension's are not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

router = APIRouter()


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


@router.get("/sdapi/v1/embeddings", response_model=EmbeddingsResponse)
def embeddings(request: Request) -> dict[str, Any]:
    """The loaded model's split of the files (`loaded` sorted by lower-case name); all `loaded` before a model
    is loaded (no width to check)."""
    state = request.app.state.sdedge
    loaded = state.models.loaded
    return state.embeddings.listing(loaded[1] if loaded is not None else None)


@router.post("/sdapi/v1/refresh-embeddings")
def refresh_embeddings(request: Request) -> None:
    """Read the files again; the models get them before their next generation."""
    request.app.state.sdedge.embeddings.refresh()
    return None

"""GET /sdapi/v1/loras and POST /refresh-loras, as A1111's Lora extension registers them (no API auth there:
extensions-builtin/Lora/scripts/lora_script.py: api_networks)."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/sdapi/v1/loras")
def loras(request: Request) -> list[dict]:
    """[{name, alias, path, metadata}] in scan order."""
    return [entry.api() for entry in request.app.state.sdedge.loras.entries()]


@router.post("/sdapi/v1/refresh-loras")
def refresh_loras(request: Request) -> None:
    request.app.state.sdedge.loras.refresh()
    return None

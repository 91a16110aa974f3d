"""The A1111 listing and housekeeping routes sdedge has nothing behind (yet): they answer with what exists —
empty lists, no-ops — so clients that enumerate everything at start-up never meet a 404 (A1111
modules/api/api.py)."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel

router = APIRouter()


class InterrogateRequest(BaseModel):
    image: str = ""
    model: str = "clip"


@router.get("/sdapi/v1/hypernetworks")
def hypernetworks() -> list[dict]:
    return []


@router.get("/sdapi/v1/face-restorers")
def face_restorers(request: Request) -> list[dict]:
    """The restorers of `--face-restorers-dir` by name (`CodeFormer`, `GFPGAN`, else the file's stem), with that
    folder as `cmd_dir` (A1111 modules/api/api.py: Api.get_face_restorers)."""
    registry = getattr(request.app.state.sdedge, "face_restorers", None)
    if registry is None:
        return []
    return [{"name": name, "cmd_dir": str(registry.folder)} for name in registry.names()]


@router.get("/sdapi/v1/realesrgan-models")
def realesrgan_models() -> list[dict]:
    return []


@router.get("/sdapi/v1/extensions")
def extensions() -> list[dict]:
    return []


def _ram() -> dict[str, Any]:
    """Process RSS and machine total, in bytes (A1111 uses psutil; /proc and sysconf give the same here)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"error": "total memory unknown", "used": used}
    return {"free": total - used, "used": used, "total": total}


@router.get("/sdapi/v1/memory")
def memory() -> dict[str, Any]:
    return {"ram": _ram(), "cuda": {"error": "unavailable"}}


@router.post("/sdapi/v1/interrogate")
def interrogate(req: InterrogateRequest) -> dict:
    raise HTTPException(status_code=404, detail="Model not found")  # no captioning model ships with sdedge


def _unsupported(what: str):
    def handler(body: dict[str, Any] = Body(default_factory=dict)) -> dict:
        return {"info": f"{what} error: not supported by sdedge"}

    return handler


for _path, _what in (("create/embedding", "create embedding"), ("create/hypernetwork", "create hypernetwork"),
                     ("train/embedding", "train embedding"), ("train/hypernetwork", "train hypernetwork")):
    router.add_api_route(f"/sdapi/v1/{_path}", _unsupported(_what), methods=["POST"])

"""GET /sdapi/v1/scripts and /sdapi/v1/script-info (A1111 modules/api/api.py: get_scripts_list,
get_script_info): the built-in scripts of service/a1111/scripts/registry.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.a1111.scripts.registry import script_info as registry_info
from service.a1111.scripts.registry import scripts_list
from service.runtime.script_jobs import context

router = APIRouter()


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


@router.get("/sdapi/v1/scripts", response_model=ScriptsList)
def scripts():
    return scripts_list()


@router.get("/sdapi/v1/script-info")
def script_info(request: Request) -> list[dict[str, Any]]:
    state = request.app.state.sdedge
    return registry_info({img2img: context(state, img2img) for img2img in (False, True)})

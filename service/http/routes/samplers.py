"""GET /sdapi/v1/samplers and /schedulers: the names `sampler_name` and `scheduler` accept (A1111
modules/api/api.py:
Api.get_samplers, get_schedulers)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from service.a1111.sampler_names import sampler_items, scheduler_items

router = APIRouter()


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


@router.get("/sdapi/v1/samplers", response_model=list[SamplerItem])
def samplers() -> list[dict]:
    return sampler_items()


@router.get("/sdapi/v1/schedulers", response_model=list[SchedulerItem])
def schedulers() -> list[dict]:
    return scheduler_items()

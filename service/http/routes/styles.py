"""GET /sdapi/v1/prompt-styles: the styles of the configured styles.csv files (A1111 modules/api/api.py:
Api.get_prompt_styles)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.a1111.styles import styles_of

router = APIRouter()


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


@router.get("/sdapi/v1/prompt-styles", response_model=list[PromptStyleItem])
def prompt_styles(request: Request) -> list[PromptStyleItem]:
    styles = styles_of(request.app.state.sdedge).styles
    return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in styles.values()]

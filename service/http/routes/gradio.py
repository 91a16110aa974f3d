"""The Gradio routes A1111 clients probe for liveness and configuration (A1111 webui.py via Gradio 3.41's
`/queue/status` and `/config`; clients: Kilvoctu/aiyabot, cyanic-sd-krita).

A1111 serves them from Gradio 3.41; sdedge has no web UI, so they answer with the parts clients read: the queue
estimate cyanic-sd-krita polls for liveness, and a config without auth (aiyabot reads a 401 as Gradio auth).
Like A1111's Gradio routes, they are outside `--api-auth`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.runtime.jobs import JobState
from service.runtime.state import ServerState

router = APIRouter()

GRADIO_VERSION = "3.41.2"  # the Gradio A1111 v1.10.1 pins


class Estimation(BaseModel):
    """Gradio 3.41's `queue.Estimation`: `queue_size` jobs waiting, times in seconds."""

    msg: str | None = "estimation"
    rank: int | None = None
    queue_size: int
    avg_event_process_time: float | None = None
    avg_event_concurrent_process_time: float | None = None
    rank_eta: int | None = None
    queue_eta: int


def _average_seconds(state: ServerState) -> float | None:
    durations = [job.finished_at - job.progress.time_start for job in state.queue.recent()
                 if job.state == JobState.DONE and job.finished_at and job.progress.time_start]
    return sum(durations) / len(durations) if durations else None


@router.get("/queue/status", response_model=Estimation)
def queue_status(request: Request) -> Estimation:
    state: ServerState = request.app.state.sdedge
    waiting = len(state.queue.pending())
    average = _average_seconds(state)
    return Estimation(queue_size=waiting, avg_event_process_time=average,
                      avg_event_concurrent_process_time=average,
                      queue_eta=round(waiting * average) if average is not None else 0)


@router.get("/config")
def config(request: Request) -> dict[str, Any]:
    """The top-level keys of Gradio 3.41's config, with no components: enough for a client that checks the
    server is up, which Gradio it is and whether it wants a login."""
    return {
        "version": GRADIO_VERSION,
        "mode": "blocks",
        "dev_mode": False,
        "analytics_enabled": False,
        "components": [],
        "css": None,
        "title": "Stable Diffusion",
        "is_space": False,
        "enable_queue": True,
        "show_error": True,
        "show_api": True,
        "is_colab": False,
        "stylesheets": [],
        "theme": "default",
        "layout": {"id": 0, "children": []},
        "dependencies": [],
        "root": str(request.scope.get("root_path", "")),
    }

"""POST /sdapi/v1/server-kill, /server-restart and /server-stop: registered only with `--api-server-stop`
(A1111 modules/api/api.py: Api.__init__, kill_webui, restart_webui, stop_webui), as A1111 does."""

from __future__ import annotations

import logging
import os
import signal

from fastapi import APIRouter, BackgroundTasks, Request, Response

log = logging.getLogger(__name__)

router = APIRouter()


def _stop_process() -> None:
    # SIGTERM is uvicorn's graceful shutdown: requests in flight finish, then `serve` returns.
    os.kill(os.getpid(), signal.SIGTERM)


@router.post("/sdapi/v1/server-kill")
def server_kill() -> None:
    """The process exits at once, without answering (A1111 `stop_program`)."""
    log.warning("server-kill requested: exiting")
    logging.shutdown()
    os._exit(0)


@router.post("/sdapi/v1/server-restart")
def server_restart() -> Response:
    """A1111 restarts only under its launcher's restart loop; sdedge has none, so it is never restartable:
    an empty 501, as A1111 answers when not restartable."""
    return Response(status_code=501)


@router.post("/sdapi/v1/server-stop")
def server_stop(request: Request, background: BackgroundTasks) -> Response:
    """`Stopping.`, then a graceful shutdown once the answer is sent."""
    log.warning("server-stop requested: shutting down")
    background.add_task(getattr(request.app.state, "stop_server", _stop_process))
    return Response("Stopping.")

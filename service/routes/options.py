"""GET/POST /sdapi/v1/options (a1111-api.md §9) and GET /sdapi/v1/cmd-flags."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request

from service.generate import enqueue
from service.options import INFO_ONLY, InvalidOption, coerce_option
from service.state import ServerState

router = APIRouter()

# Read-only in practice: the server sets it when a checkpoint loads; a posted value is ignored.
DERIVED = {"sd_checkpoint_hash"}


@router.get("/sdapi/v1/options")
def get_options(request: Request) -> dict[str, Any]:
    return request.app.state.sdedge.options.api_snapshot()


@router.post("/sdapi/v1/options")
def set_options(request: Request, body: dict[str, Any] = Body(...)) -> None:
    apply_options(request.app.state.sdedge, body)
    return None


def apply_options(state: ServerState, body: dict[str, Any]) -> None:
    """Every value is checked before anything changes; a new `sd_model_checkpoint` is loaded by a job on the
    queue, so the call returns once earlier jobs and the load are done (A1111 blocks the same way).
    The gRPC SetOptions takes this path too."""
    changes = {k: v for k, v in body.items() if k not in DERIVED and k not in INFO_ONLY}
    checkpoint = changes.pop("sd_model_checkpoint", None)
    entry = None
    if checkpoint is not None:
        entry = state.models.find(str(checkpoint))
        if entry is None:
            raise HTTPException(status_code=404, detail=f"model {checkpoint!r} not found")
    unknown = [k for k in changes if k not in state.options.defaults]
    if unknown:
        raise HTTPException(status_code=422, detail=f"unknown option {unknown[0]!r}")
    try:
        for key, value in changes.items():
            coerce_option(key, value, state.options.defaults[key])
    except InvalidOption as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if entry is not None:
        loaded = state.models.loaded
        if loaded is None or loaded[0] != entry or state.options.get("sd_model_checkpoint") != entry.title:
            enqueue(state, state.switch_checkpoint(entry)).future.result()
    state.options.update(changes)


def _hidden(value: str | None) -> str | None:
    return None if value is None else "<hidden>"


@router.get("/sdapi/v1/cmd-flags")
def cmd_flags(request: Request) -> dict[str, Any]:
    """A1111's flag names where they mean the same here, then sdedge's own. Credentials never leave."""
    config = request.app.state.sdedge.config
    return {
        "api": True,
        "nowebui": True,
        "api_auth": _hidden(config.api_auth),
        "api_log": config.api_log,
        "listen": config.listen,
        "port": config.port,
        "server_name": config.host,
        "cors_allow_origins": config.cors_allow_origins,
        "cors_allow_origins_regex": config.cors_allow_origins_regex,
        "subpath": None,
        "tls_keyfile": None,
        "tls_certfile": None,
        "api_server_stop": config.api_server_stop,
        "timeout_keep_alive": 30,
        "ckpt_dir": str(config.models_dir) if config.models_dir else None,
        "gradio_auth": None,
        "medvram": False,
        "lowvram": False,
        "xformers": False,
        "no_hashing": False,
        "skip_load_model_at_start": False,
        "model": str(config.model) if config.model else None,
        "models_dir": str(config.models_dir) if config.models_dir else None,
        "upscalers_dir": str(config.upscalers_dir) if config.upscalers_dir else None,
        "providers": config.providers,
        "max_queue": config.max_queue,
        "options_file": str(config.options_file) if config.options_file else None,
    }

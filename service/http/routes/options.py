"""GET/POST /sdapi/v1/options (A1111 modules/api/api.py: Api.get_config, set_config) and GET
/sdapi/v1/cmd-flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Request

from service.runtime.set_options import apply_options

router = APIRouter()


@router.get("/sdapi/v1/options")
def get_options(request: Request) -> dict[str, Any]:
    return request.app.state.sdedge.options.api_snapshot()


@router.post("/sdapi/v1/options")
def set_options(request: Request, body: dict[str, Any] = Body(...)) -> None:
    apply_options(request.app.state.sdedge, body)
    return None


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
        "face_restorers_dir": str(config.face_restorers_dir) if config.face_restorers_dir else None,
        "providers": config.providers,
        "max_queue": config.max_queue,
        "options_file": str(config.options_file) if config.options_file else None,
        "data_dir": str(Path(config.data_dir).resolve()),  # A1111's key: where outputs go (--data-dir)
        "allow_local_images": str(config.local_images_dir) if config.local_images_dir else None,
    }

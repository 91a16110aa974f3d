"""The FastAPI application: middleware, error handlers and the sdapi routers."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware

from service.a1111.sdapi_models import RequestLimits, configure_limits
from service.http.api_log import TimingLogMiddleware
from service.http.auth import BasicAuthMiddleware, parse_credentials
from service.http.body_limit import BodyLimitMiddleware
from service.http.drain_gate import DrainGateMiddleware
from service.http.errors import install_error_handlers
from service.http.observe import ObserveMiddleware
from service.http.routes import (
    embeddings,
    extras,
    generation,
    gradio,
    listings,
    loras,
    metrics,
    models,
    options,
    pnginfo,
    progress,
    samplers,
    scripts,
    server_control,
    styles,
    upscalers,
    vae,
)
from service.runtime.state import ServerState


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="sdedge", description="Stable Diffusion behind the AUTOMATIC1111 sdapi", version="0.1.0")
    app.state.sdedge = state
    configure_limits(RequestLimits(max_side=state.config.max_side))
    install_error_handlers(app)
    if state.config.api_auth:  # innermost: CORS answers preflights and decorates the 401s
        app.add_middleware(BasicAuthMiddleware, credentials=parse_credentials(state.config.api_auth))
    config = state.config
    # Outside auth: a draining server answers 503 to anyone (service/runtime/drain.py).
    app.add_middleware(DrainGateMiddleware, state=state)
    # Outside auth (an oversized body is refused before anything reads it), inside CORS and the API log (its
    # 413/422 are decorated for browsers and logged like every answer).
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_size)
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=(config.cors_allow_origins or "").split(",") if config.cors_allow_origins else [],
        allow_origin_regex=config.cors_allow_origins_regex,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=True,
    )
    app.add_middleware(TimingLogMiddleware, api_log=config.api_log)
    # Outermost: counts and logs every answer, the ones the middlewares above give included.
    app.add_middleware(ObserveMiddleware, metrics=state.metrics, access_log=config.log_format == "json")

    app.include_router(generation.router)
    app.include_router(models.router)
    app.include_router(options.router)
    app.include_router(upscalers.router)
    app.include_router(progress.router)
    app.include_router(extras.router)
    app.include_router(pnginfo.router)
    app.include_router(listings.router)
    app.include_router(loras.router)
    app.include_router(embeddings.router)
    app.include_router(vae.router)
    app.include_router(scripts.router)
    app.include_router(samplers.router)
    app.include_router(styles.router)
    app.include_router(gradio.router)
    app.include_router(metrics.router)
    if config.api_server_stop:
        app.include_router(server_control.router)
    return app

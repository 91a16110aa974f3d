"""The FastAPI application: middleware, error handlers and the sdapi routers."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware

from service.errors import install_error_handlers
from service.routes import generation, models, options
from service.state import ServerState


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="sdedge", description="Stable Diffusion behind the AUTOMATIC1111 sdapi", version="0.1.0")
    app.state.sdedge = state
    install_error_handlers(app)
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    config = state.config
    app.add_middleware(
        CORSMiddleware,
        allow_origins=(config.cors_allow_origins or "").split(",") if config.cors_allow_origins else [],
        allow_origin_regex=config.cors_allow_origins_regex,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=True,
    )

    @app.middleware("http")
    async def process_time(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Process-Time"] = f"{time.perf_counter() - start:.4f}"
        return response

    app.include_router(generation.router)
    app.include_router(models.router)
    app.include_router(options.router)
    return app

"""A1111's error response shape `{error, detail, body, errors}` (a1111-api.md §1.5) for every failure."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class InvalidRequest(StarletteHTTPException):
    """A client's mistake found after schema validation (e.g. width not a multiple of 8): a 422, never a 500."""

    def __init__(self, field: str, message: str, status_code: int = 422):
        super().__init__(status_code=status_code, detail=f"{field}: {message}")
        self.field = field


def error_body(exc: Exception, detail=None, body="", errors: str | None = None) -> dict:
    return {
        "error": type(exc).__name__,
        "detail": detail if detail is not None else getattr(exc, "detail", ""),
        "body": body,
        "errors": str(exc) if errors is None else errors,
    }


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # A1111's handler drops exception headers (no WWW-Authenticate on 401); Retry-After on 503 is ours.
    headers = {"Retry-After": exc.headers["Retry-After"]} if exc.headers and "Retry-After" in exc.headers else None
    if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    return JSONResponse(error_body(exc, errors=""), status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's 422 list stays under "detail" (what A1111's clients parse); the A1111 keys are added around it.
    details = jsonable_encoder(exc.errors(), custom_encoder={Exception: str, bytes: lambda b: b.decode("latin-1")})
    summary = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in details)
    return JSONResponse(error_body(exc, detail=details, errors=summary), status_code=422)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(exc, detail=""), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)

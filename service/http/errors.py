"""A1111's error response shape `{error, detail, body, errors}` (A1111 modules/api/api.py: api_middleware) for
every failure, the
domain exceptions of service/a1111/errors.py included."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.a1111.errors import (
    InvalidRequest,
    JobTimeout,
    JobTooLarge,
    ModelUnavailable,
    NotFound,
    OptionRefused,
    QueueBusy,
    RequestForbidden,
    RequestTooLarge,
    ServiceError,
    ShuttingDown,
)

log = logging.getLogger(__name__)

# The status of each domain exception (most specific class first; service/a1111/errors.py).
_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (RequestTooLarge, 413),
    (RequestForbidden, 403),
    (InvalidRequest, 422),
    (NotFound, 404),
    (OptionRefused, 422),
    (JobTooLarge, 413),
    (QueueBusy, 503),
    (ShuttingDown, 503),
    (ModelUnavailable, 503),
    (JobTimeout, 504),
)


def http_status(exc: ServiceError) -> int:
    """The HTTP status a domain exception is sent with."""
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 400)


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


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    # Retry-After on a full queue is ours (A1111 has no queue limit).
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueBusy | ShuttingDown) else None
    body = error_body(exc, errors="")
    if exc.a1111_error:
        body["error"] = exc.a1111_error
    return JSONResponse(body, status_code=http_status(exc), headers=headers)


MAX_ECHO_CHARS = 200  # of a string the 422 echoes back (a 10 MB prompt is not sent back whole)
MAX_ECHO_ITEMS = 20  # of a list or dict echoed back
MAX_ECHO_DEPTH = 4


def echo(value, depth: int = 0):
    """What a 422 may echo of the client's input: JSON-safe whatever it was (inf, nan, bytes, objects) and small
    (long strings cut, containers cut and shallow); strict JSON, so the handler itself can never fail."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 2**64 else _cut(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray):
        return _cut(bytes(value[:MAX_ECHO_CHARS]).decode("latin-1"), len(value))
    if isinstance(value, str):
        return _cut(value)
    if depth >= MAX_ECHO_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        out = {_cut(str(k)): echo(v, depth + 1) for k, v in items[:MAX_ECHO_ITEMS]}
        if len(items) > MAX_ECHO_ITEMS:
            out["…"] = f"{len(items) - MAX_ECHO_ITEMS} more"
        return out
    if isinstance(value, list | tuple | set):
        items = list(value)
        out = [echo(v, depth + 1) for v in items[:MAX_ECHO_ITEMS]]
        return out + [f"… {len(items) - MAX_ECHO_ITEMS} more"] if len(items) > MAX_ECHO_ITEMS else out
    return _cut(str(value))


def _cut(text: str, length: int | None = None) -> str:
    length = len(text) if length is None else length
    return text if length <= MAX_ECHO_CHARS else f"{text[:MAX_ECHO_CHARS]}… ({length} characters)"


def validation_details(errors: list[dict]) -> list[dict]:
    """pydantic's error list as FastAPI sends it, every echoed value made safe by `echo`."""
    details = []
    for e in errors:
        item = {"type": e.get("type"), "loc": [echo(p) for p in e.get("loc", ())], "msg": echo(e.get("msg", ""))}
        if "input" in e:
            item["input"] = echo(e["input"])
        if e.get("ctx"):
            item["ctx"] = echo(e["ctx"])
        details.append(item)
    return details


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's 422 list stays under "detail" (what A1111's clients parse); the A1111 keys are added around it.
    details = validation_details(list(exc.errors()))
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in details)
    return JSONResponse(error_body(exc, detail=details, errors=summary), status_code=422)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(exc, detail=""), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)

"""Checks of every HTTP request body before any route sees it, answered in A1111's error shape.

- Size: a declared Content-Length over the limit is a 413 before a byte is read; a chunked body is counted as it
  arrives and refused once it passes the limit, so neither is ever held in memory whole. The bytes a refused
  client is still sending are read and dropped (up to DRAIN_BYTES) so that it reads the answer, not a reset.
- Non-finite numbers: Python's json module (FastAPI's parser) turns `NaN`, `Infinity` and `1e400` into floats
  that no later step can serialise or compute with; a JSON body holding one is a 422 naming where.
"""

from __future__ import annotations

import json
import math
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MiB = 1024 * 1024
DEFAULT_MAX_BODY = 64 * MiB  # a batch of several large base64 init images fits; nothing legitimate is bigger
DRAIN_BYTES = 1024 * MiB
# Cheap pre-filter: a body without any of these cannot hold a non-finite number (exponents of 3+ digits only
# can overflow), so most bodies are never parsed twice.
_MAYBE_NON_FINITE = re.compile(rb"NaN|Infinity|[0-9][eE]\+?[0-9]{3}")


def too_large_body(limit: int, size: int | None) -> bytes:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    detail = f"Request body is {what}; the limit is {limit} bytes (--max-body-size)"
    return json.dumps({"error": "PayloadTooLarge", "detail": detail, "body": "", "errors": ""}).encode()


class BodyLimitMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): the body is buffered up to `max_bytes` and handed on unchanged."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            await _drain(receive, DRAIN_BYTES)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before its body was complete
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, None)
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()
        problem = _non_finite(scope, body)
        if problem is not None:
            await _respond(send, 422, problem)
            return
        await self.app(scope, _replay({"type": "http.request", "body": body, "more_body": False}, receive), send)

    async def _refuse(self, send: Send, size: int | None) -> None:
        await _respond(send, 413, too_large_body(self.max_bytes, size), close=True)


async def _respond(send: Send, status: int, payload: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": payload})


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str):
    raise _NonFinite(name)


def _checked_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _non_finite(scope: Scope, body: bytes) -> bytes | None:
    """The 422 payload when a JSON body holds NaN, ±Infinity or a number too large for a float; else None
    (bodies that are not JSON, or not valid JSON, are left to the route's own parsing and errors)."""
    content_type = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
    if (content_type and b"json" not in content_type) or not _MAYBE_NON_FINITE.search(body):
        return None
    try:
        json.loads(body, parse_constant=_reject_constant, parse_float=_checked_float)
    except _NonFinite as exc:
        token = str(exc)[:40]
        msg = f"non-finite numbers (NaN, Infinity, 1e400) are not allowed in JSON, got {token}"
        detail = [{"type": "finite_number", "loc": ["body"], "msg": msg, "input": token}]
        return json.dumps({"error": "RequestValidationError", "detail": detail, "body": "",
                           "errors": f"body: {msg}"}).encode()
    except (ValueError, RecursionError):
        return None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(message: Message, receive: Receive) -> Receive:
    """A receive that hands out the buffered body, then whatever the server's receive gives (disconnects)."""
    pending = [message]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


async def _drain(receive: Receive, limit: int) -> None:
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return

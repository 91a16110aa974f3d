"""One HTTP request carried whole between the Ray ingress and a replica, and run there through sdedge's own
FastAPI app in process (ASGI): the replica answers exactly as `sdedge serve` would, middleware included."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

# How long a cancelled call gives the app to notice its client left (the generation route polls every 0.5 s and
# then removes its queued job, service/http/routes/generation.py: wait_for).
DISCONNECT_GRACE_S = 2.0


@dataclass(frozen=True)
class Forwarded:
    """An HTTP request as the ingress received it (picklable: it crosses Ray's object store)."""

    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON, None when it is not JSON (the replica's app then answers A1111's 422)."""
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, UnicodeDecodeError):
            return None

    def with_json(self, payload: Any) -> Forwarded:
        body = json.dumps(payload).encode()
        headers = tuple((k, v) for k, v in self.headers if k.lower() != b"content-length")
        return replace(self, body=body, headers=headers + ((b"content-length", str(len(body)).encode()),))


@dataclass
class Answer:
    """The app's response: status, headers, the whole body."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == key), None)

    def set_header(self, name: str, value: str) -> None:
        key = name.lower().encode()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != key] + [(key, value.encode("latin-1"))]


async def call_app(app, request: Forwarded) -> Answer:
    """Run `request` through the ASGI `app` and collect its answer. A caller that is cancelled (the ingress's
    client left, Ray cancelled the call) is reported to the app as a disconnect, so a queued job is removed."""
    disconnected = asyncio.Event()
    sent_body = False
    answer = Answer(status=500)
    done = False

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal done
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            done = done or not message.get("more_body", False)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "scheme": "http", "path": request.path, "raw_path": request.path.encode(), "root_path": "",
        "query_string": request.query, "headers": list(request.headers), "client": ("ray-ingress", 0),
        "server": ("sdedge-replica", 0),
    }
    task = asyncio.ensure_future(app(scope, receive, send))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        disconnected.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, DISCONNECT_GRACE_S)
        raise
    return answer

"""Timing and `--api-log` (A1111 modules/api/api.py: api_middleware): every response gets `X-Process-Time`;
with --api-log, one line
per /sdapi request in A1111's format. A plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client
disconnects from the routes (a queued job must leave when its client goes)."""

from __future__ import annotations

import datetime
import logging
import time

log = logging.getLogger("sdedge.api")


class TimingLogMiddleware:
    def __init__(self, app, api_log: bool = False):
        self.app = app
        self.api_log = api_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def timed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-process-time"]
                headers.append((b"x-process-time", f"{time.perf_counter() - start:.4f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if self.api_log and scope["path"].startswith("/sdapi"):
                client = (scope.get("client") or ("0:0.0.0", 0))[0]
                log.info("API %s %s %s/%s %s %s %s %s", datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f"),
                         status["code"], scope.get("scheme", "err"), scope.get("http_version", "0.0"),
                         scope.get("method", "err"), scope["path"], client, round(time.perf_counter() - start, 4))

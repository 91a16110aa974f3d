"""Request metrics and the structured access log: one ASGI middleware, outermost, so it sees every answer (401s,
413s, the drain's 503s included).

Requests are counted by route template (`/sdapi/v1/txt2img`, `/agent-scheduler/v1/task/{id}`), never by raw path,
so a client cannot grow the metric without bound; a path no route matched is counted as `<unmatched>`.
With `--log-format json` it writes one access line per request with the task id of a generation
(`X-Task-Id`, service/http/routes/generation.py), which joins it to the job's lines (service/runtime/logs.py).
"""

from __future__ import annotations

import logging
import time

from service.runtime.metrics import ServerMetrics

log = logging.getLogger("sdedge.access")

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as OTHER


class ObserveMiddleware:
    def __init__(self, app, metrics: ServerMetrics, access_log: bool = False):
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        seen = {"status": 500, "task_id": None}

        async def observed_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-task-id":
                        seen["task_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "") if scope.get("method") in METHODS else "OTHER"
            self.metrics.http_requests.labels(method, route, str(seen["status"])).inc()
            self.metrics.http_seconds.labels(method, route).observe(seconds)
            if self.access_log:
                client = (scope.get("client") or ("", 0))[0]
                log.info("%s %s %s %.4f s", method, scope["path"], seen["status"], seconds,
                         extra={"event": "access", "method": method, "path": scope["path"], "route": route,
                                "status": seen["status"], "duration_s": round(seconds, 4), "client": client,
                                "task_id": seen["task_id"]})

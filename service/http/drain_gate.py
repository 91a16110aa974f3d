"""The REST door while draining (service/runtime/drain.py): new requests get 503 with Retry-After in A1111's error
shape; what a client already waiting needs (its progress, an interrupt) and the metrics stay open. And the
uvicorn server whose signal handling starts the drain instead of uvicorn's immediate shutdown."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Generator

import uvicorn

from service.a1111.errors import ShuttingDown
from service.runtime.drain import DRAIN_SIGNALS, REASON, Drain

# Open while draining: a waiting client polls progress or interrupts its own job; the scraper watches the drain.
OPEN_WHILE_DRAINING = frozenset({"/sdapi/v1/progress", "/internal/progress", "/sdapi/v1/interrupt",
                                 "/sdapi/v1/skip", "/metrics"})


class DrainGateMiddleware:
    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.state.draining or scope["path"] in OPEN_WHILE_DRAINING:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": ShuttingDown.__name__, "detail": REASON, "body": "", "errors": ""}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(ShuttingDown.retry_after_s).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn's server with SIGTERM/SIGINT handed to `drain.signal`: uvicorn would stop at once (and re-raise
    the signal, exit status -15); the drain stops it when the work is done (`should_exit`), exit status 0."""

    def __init__(self, config: uvicorn.Config, drain: Drain | None = None):
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self.drain is None or threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        drain = self.drain
        previous = {sig: signal.signal(sig, lambda signum, frame: drain.signal(signum)) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

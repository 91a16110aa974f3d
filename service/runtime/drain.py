"""Graceful drain on SIGTERM (or a first SIGINT): stop taking work, finish what was taken, then stop.

1. `begin()`: `state.draining` is set (the doors answer new requests with 503 + Retry-After / UNAVAILABLE, gRPC
   health turns NOT_SERVING) and the queue refuses submissions (a request that passed the door just before gets
   the same ShuttingDown).
2. `run()`: the running job and the queued ones run on as usual until the queue is idle or `timeout` seconds have
   passed. At the deadline the queued jobs are answered with ShuttingDown (a clean 503) and the running job is
   interrupted: like A1111's /interrupt, its client gets the images of the steps done so far.
3. `on_done()` is called (the CLI tells uvicorn and the gRPC server to stop; the process exits 0).

A second signal while draining forces the exit at once (`force`, exit status 1): the operator's escape hatch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from service.a1111.errors import ShuttingDown
from service.runtime.state import ServerState

log = logging.getLogger(__name__)

FORCED_EXIT_STATUS = 1
REASON = "the server is shutting down and takes no new work; retry shortly (or on another replica)"
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """`timeout`: seconds from the signal until unfinished work is answered and the server stops.
    `interrupt_grace`: how long an interrupted job may take to stop after that (its current step ends it)."""

    def __init__(self, state: ServerState, timeout: float, on_done: Callable[[], None],
                 on_begin: Callable[[], None] | None = None, interrupt_grace: float = 10.0,
                 poll: float = 0.05, force: Callable[[], None] | None = None):
        self.state = state
        self.timeout = max(0.0, float(timeout))
        self.on_done = on_done
        self.on_begin = on_begin
        self.interrupt_grace = interrupt_grace
        self.poll = poll
        self.force = force or (lambda: os._exit(FORCED_EXIT_STATUS))
        self.started: float | None = None
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def reason(self) -> str:
        return REASON

    def begin(self) -> bool:
        """Start draining; False when it had started already."""
        with self._lock:
            if self.started is not None:
                return False
            self.started = time.monotonic()
        self.state.draining = True
        self.state.queue.stop_accepting(self.reason())
        pending = len(self.state.queue.pending())
        running = self.state.queue.current
        log.warning("draining: %s running, %d queued; stopping within %g s (a second signal forces)",
                    running.id if running else "nothing", pending, self.timeout,
                    extra={"event": "drain_start", "queued": pending, "timeout_s": self.timeout})
        if self.on_begin is not None:
            self.on_begin()
        return True

    def run(self) -> None:
        """Wait for the queue to empty or the deadline, answer what is left, then `on_done()`."""
        assert self.started is not None, "begin() first"
        queue = self.state.queue
        deadline = self.started + self.timeout
        while not queue.idle() and time.monotonic() < deadline:
            time.sleep(self.poll)
        if not queue.idle():
            dropped = queue.fail_pending(ShuttingDown(f"{self.reason()} (the drain deadline of {self.timeout:g} s "
                                                      "passed before this job started)"))
            running = queue.interrupt_current()
            log.warning("drain deadline: %d queued jobs answered 503, %s interrupted", len(dropped),
                        running.id if running else "no job",
                        extra={"event": "drain_deadline", "dropped": len(dropped)})
            end = time.monotonic() + self.interrupt_grace
            while not queue.idle() and time.monotonic() < end:
                time.sleep(self.poll)
        log.info("drained in %.1f s; stopping", time.monotonic() - self.started,
                 extra={"event": "drain_end", "idle": queue.idle()})
        self.finished.set()
        self.on_done()

    def signal(self, signum: int) -> None:
        """A signal handler's work: the first signal starts the drain on a thread, a second one forces."""
        if self.begin():
            threading.Thread(target=self.run, name="sdedge-drain", daemon=True).start()
            return
        log.error("second %s while draining: exiting now", signal.Signals(signum).name)
        self.force()

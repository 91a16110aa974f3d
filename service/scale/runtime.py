"""One checkpoint's sdedge runtime inside a Ray replica: a ServerState whose configured checkpoint is that one,
loaded, and the sdapi FastAPI app over it. A replica holds one per checkpoint Ray's multiplexing gave it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from service.a1111.errors import ModelUnavailable
from service.http.app import create_app
from service.runtime.jobs import Job
from service.runtime.state import NoModelLoaded, ServerConfig, ServerState

log = logging.getLogger(__name__)


class CheckpointRuntime:
    """`ServerState` + app for one checkpoint. The checkpoint is fixed for the runtime's life: a POST /options
    naming another is handled by the ingress, never sent here (service/scale/ingress.py)."""

    def __init__(self, state: ServerState, checkpoint: str, on_close: Callable[[str], None] | None = None):
        self.state = state
        self.checkpoint = checkpoint
        self.app = create_app(state)
        self.on_close = on_close
        self.closed = False

    @classmethod
    def open(cls, config: ServerConfig, checkpoint: str,
             on_close: Callable[[str], None] | None = None) -> CheckpointRuntime:
        """Build the state and load `checkpoint` (a title the ingress resolved) before the first job. Blocking:
        call it off the event loop."""
        state = ServerState(replace(config))
        entry = state.models.find(checkpoint)
        if entry is None:
            state.close()
            raise ModelUnavailable(f"no checkpoint named {checkpoint!r} on this replica")
        # Not persisted: the options file is shared by every runtime of every replica.
        state.options.update({"sd_model_checkpoint": entry.title, "sd_checkpoint_hash": entry.sha256 or ""},
                             from_api=False, persist=False)
        try:
            state.load_default()
        except NoModelLoaded as exc:
            state.close()
            raise ModelUnavailable(str(exc)) from None
        return cls(state, entry.title, on_close)

    def find(self, task_id: str) -> Job | None:
        """The task's job (waiting, running or among the last finished) when this runtime holds it."""
        return self.state.queue.get(task_id)

    def close(self, wait: float | None = None) -> None:
        """Unload: jobs already accepted finish first (up to `wait` s, the drain timeout by default), then the
        worker stops. Ray calls this as `__del__` when its multiplexing LRU evicts the checkpoint."""
        if self.closed:
            return
        self.closed = True
        if self.on_close is not None:
            self.on_close(self.checkpoint)
        deadline = time.monotonic() + (self.state.config.drain_timeout if wait is None else wait)
        while not self.state.queue.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("unloading checkpoint %s", self.checkpoint)
        self.state.close()

    def __del__(self) -> None:  # Ray Serve's multiplexing calls `__del__` to unload a model
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            log.exception("closing the runtime of %s failed", self.checkpoint)

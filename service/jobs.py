"""The job queue every front door submits to: FIFO, bounded, one worker thread per execution backend.

A job carries its id, state, progress (job_no/job_count, sampling step/steps), the latest latents for previews,
interrupt/skip/cancel flags and its result. REST and gRPC both submit here, so their jobs interleave in one FIFO.
"""

from __future__ import annotations

import enum
import itertools
import logging
import random
import string
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs."""


class JobCancelled(Exception):
    """The job was removed before it started."""


def new_task_id(kind: str) -> str:
    """A1111's generated id: `task(txt2img-XXXXXXX)` with 7 characters from A–Z0–9."""
    suffix = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
    return f"task({kind}-{suffix})"


@dataclass
class Progress:
    job_no: int = 0
    job_count: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    time_start: float | None = None
    latents: np.ndarray | None = None
    textinfo: str | None = None


@dataclass
class Job:
    """One queued unit of work; `run(job)` executes on the worker thread and returns the result."""

    kind: str
    run: Callable[[Job], Any]
    id: str = ""
    state: JobState = JobState.QUEUED
    progress: Progress = field(default_factory=Progress)
    interrupted: bool = False
    skipped: bool = False
    future: Future = field(default_factory=Future)
    sequence: int = 0
    listeners: list[Callable[[Job], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_task_id(self.kind)

    def should_stop(self) -> bool:
        """Checked by the denoiser before every step."""
        return self.interrupted or self.skipped

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:  # a broken listener must not kill the job
                log.exception("progress listener failed")


class JobQueue:
    """FIFO of jobs with a bounded number waiting; a single worker runs them one at a time."""

    def __init__(self, max_pending: int = 64, name: str = "worker"):
        self.max_pending = max_pending
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._cond = threading.Condition()
        self._sequence = itertools.count()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name=f"sdedge-{name}", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"queue is full ({self.max_pending} jobs waiting)")
            job.sequence = next(self._sequence)
            self._pending.append(job)
            self._jobs[job.id] = job
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """A queued job is removed; a running one is interrupted at its next step."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                job.state = JobState.CANCELLED
                self._jobs.pop(job.id, None)
                job.future.set_exception(JobCancelled(job.id))
                return
        if job.state == JobState.RUNNING:
            job.interrupt()

    @property
    def current(self) -> Job | None:
        return self._current

    def pending(self) -> list[Job]:
        with self._cond:
            return list(self._pending)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._pending.popleft()
                job.state = JobState.RUNNING
                job.progress.time_start = time.time()
                self._current = job
            job.notify()
            try:
                result = job.run(job)
            except BaseException as exc:  # the worker keeps serving whatever a job raises
                job.state = JobState.FAILED
                job.future.set_exception(exc)
            else:
                job.state = JobState.DONE
                job.future.set_result(result)
            finally:
                with self._cond:
                    self._current = None
                    self._jobs.pop(job.id, None)
                job.notify()

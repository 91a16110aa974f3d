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
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
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


def _finished(job: Job) -> None:
    raise RuntimeError(f"job {job.id} has already run")


def new_task_id(kind: str) -> str:
    """A1111's generated id: `task(txt2img-XXXXXXX)` with 7 characters from A–Z0–9."""
    suffix = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
    return f"task({kind}-{suffix})"


@dataclass
class Progress:
    """What /progress reports. `job_count` is -1 from the job's start until its work is counted (A1111)."""

    job_no: int = 0
    job_count: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    time_start: float | None = None
    latents: np.ndarray | None = None
    textinfo: str | None = None
    job_timestamp: str = "0"


@dataclass
class Preview:
    """The job's live preview, decoded lazily when someone asks (A1111 `set_current_image`)."""

    image: Any = None
    id: int = 0
    job_no: int = 0
    step: int = 0


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
    preview: Preview = field(default_factory=Preview)
    enqueued_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None  # "ExceptionType: message" of a failed job
    _skip_pending: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_task_id(self.kind)

    def should_stop(self) -> bool:
        """Polled by the denoiser before every step: true ends the current batch.

        A skip ends one batch only, so it is used up by the poll that acts on it; the pipeline polls once more
        after an ended batch and goes on when that answers false. An interrupt ends every remaining batch.
        """
        if self.interrupted:
            return True
        if self._skip_pending:
            self._skip_pending = False
            return True
        return False

    def interrupt(self) -> None:
        self.interrupted = True

    def summary(self) -> Job:
        """A light copy kept after the job ends: its state, flags and counters, not its result, latents or preview
        (the finished-jobs memory must not hold images)."""
        done: Future = Future()
        done.set_result(None)
        return replace(self, run=_finished, future=done, listeners=[], preview=Preview(),
                       progress=replace(self.progress, latents=None))

    def skip(self) -> None:
        # `skipped` stays set for /progress until the job ends, as A1111's state flag does within a batch.
        self.skipped = True
        self._skip_pending = True

    def notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:  # a broken listener must not kill the job
                log.exception("progress listener failed")


class JobQueue:
    """FIFO of jobs with a bounded number waiting; a single worker runs them one at a time."""

    RECENT = 16  # finished jobs remembered for /internal/progress `completed` and the SSE stream

    def __init__(self, max_pending: int = 64, name: str = "worker"):
        self.max_pending = max_pending
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._watchers: dict[str, list[Callable[[Job], None]]] = {}  # listeners of task ids not submitted yet
        self._last: Job | None = None
        self.started: deque[tuple[int, str]] = deque(maxlen=1024)  # (arrival sequence, id) in start order
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
            job.enqueued_at = time.time()
            self._pending.append(job)
            self._jobs[job.id] = job
            watchers = self._watchers.pop(job.id, [])
            job.listeners.extend(watchers)
            self._cond.notify()
        for watcher in watchers:  # a subscriber that came first sees the job queued, then every change
            watcher(job)
        return job

    def watch(self, job_id: str, listener: Callable[[Job], None]) -> Job | None:
        """Follow a task by id: the listener joins the job's listeners now if it is waiting or running, or when
        it is submitted. Returns the job when it is known already (finished ones as their summary, which never
        changes again); None means the listener waits for the submission until `unwatch`."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                job.listeners.append(listener)
                return job
            finished = self._recent.get(job_id)
            if finished is not None:
                return finished
            self._watchers.setdefault(job_id, []).append(listener)
            return None

    def unwatch(self, job_id: str, listener: Callable[[Job], None]) -> None:
        with self._cond:
            waiting = self._watchers.get(job_id, [])
            if listener in waiting:
                waiting.remove(listener)
                if not waiting:
                    del self._watchers[job_id]
            job = self._jobs.get(job_id)
            if job is not None and listener in job.listeners:
                job.listeners.remove(listener)

    def cancel(self, job: Job) -> None:
        """A queued job is removed; a running one is interrupted at its next step."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                job.state = JobState.CANCELLED
                self._jobs.pop(job.id, None)
                job.future.set_exception(JobCancelled(job.id))
                cancelled = True
            else:
                cancelled = False
        if cancelled:
            job.notify()  # e.g. an SSE stream waiting for this job ends now
            return
        if job.state == JobState.RUNNING:
            job.interrupt()

    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def last(self) -> Job | None:
        """The running job, else the one that ran last (its flags and counters are what idle /progress shows)."""
        return self._current or self._last

    def pending(self) -> list[Job]:
        with self._cond:
            return list(self._pending)

    def position(self, job: Job) -> int | None:
        """1-based place among the waiting jobs, None when not waiting."""
        with self._cond:
            for i, waiting in enumerate(self._pending):
                if waiting is job:
                    return i + 1
        return None

    def get(self, job_id: str) -> Job | None:
        """A waiting or running job, or one of the last finished ones."""
        with self._cond:
            return self._jobs.get(job_id) or self._recent.get(job_id)

    def recent(self) -> list[Job]:
        with self._cond:
            return list(self._recent.values())

    def interrupt_current(self) -> Job | None:
        """A1111's /interrupt: whatever job runs now ends after its current step; queued jobs are untouched."""
        job = self._current
        if job is not None:
            job.interrupt()
        return job

    def skip_current(self) -> Job | None:
        job = self._current
        if job is not None:
            job.skip()
        return job

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
                job.progress.job_timestamp = time.strftime("%Y%m%d%H%M%S")
                job.progress.job_count = -1
                self._current = job
                self.started.append((job.sequence, job.id))
            job.notify()
            error: BaseException | None = None
            result = None
            try:
                result = job.run(job)
            except BaseException as exc:  # the worker keeps serving whatever a job raises
                error = exc
            # The job leaves /progress before its caller sees the result: a client that polls right after its
            # response finds the server idle (A1111 ends its state before answering).
            with self._cond:
                job.state = JobState.FAILED if error is not None else JobState.DONE
                job.error = f"{type(error).__name__}: {error}" if error is not None else None
                job.finished_at = time.time()
                summary = job.summary()
                self._current = None
                self._last = summary
                if self._jobs.get(job.id) is job:
                    del self._jobs[job.id]
                self._recent[job.id] = summary
                self._recent.move_to_end(job.id)
                while len(self._recent) > self.RECENT:
                    self._recent.popitem(last=False)
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
            job.notify()

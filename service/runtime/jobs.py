"""The job queue every front door submits to: FIFO, bounded, `workers` worker threads (`--workers N`, default 1).

A job carries its id, state, progress (job_no/job_count, sampling step/steps), the latest latents for previews,
interrupt/skip/cancel flags and its result. REST and gRPC both submit here, so their jobs interleave in one FIFO.

With N workers, N jobs run at once, each started in arrival order by whichever worker is free; `current` (what
/progress shows, A1111 has one running job) is the running job that started first, and /interrupt and /skip reach
every running job (A1111: whatever runs stops). A job is stopped alone through `cancel` (its task id).

A worker cannot die silently: whatever a job raises (BaseExceptions, exceptions whose message cannot be
rendered, a failing listener) fails that job only. A watchdog thread gives every running job a deadline
(interrupted when it passes, abandoned and the worker replaced when it still does not stop) and restarts a worker
thread that died anyway; `healthy()` is false meanwhile (/internal/ping and gRPC health report it).
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
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from service.a1111.errors import JobFailed, JobTimeout

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


class QueueClosed(QueueFull):
    """The queue takes no more jobs: the server is draining (service/runtime/drain.py)."""


def describe(exc: BaseException) -> str:
    """`Type: message`, even for an exception whose `__str__` itself raises."""
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - any failure to render is reported, never propagated
        message = "<the exception's message could not be rendered>"
    return f"{type(exc).__name__}: {message}"


def reportable(exc: BaseException) -> Exception:
    """The exception a job's caller receives: an ordinary Exception whose message renders, else a JobFailed
    saying what was raised (the front doors and asyncio's futures handle only Exceptions, and error bodies
    render the message)."""
    if isinstance(exc, Exception):
        try:
            str(exc)
            return exc
        except BaseException:  # noqa: BLE001
            pass
    failed = JobFailed(f"the job raised {describe(exc)}")
    failed.__cause__ = exc  # its traceback stays in the server's log
    return failed


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
    deadline: float | None = None  # time.time() by which a running job must be done (None: no deadline)
    timed_out: bool = False  # the watchdog interrupted it at its deadline
    payload: Any = None  # what the job runs (a Generation), for the batcher to tell compatible jobs apart
    _skip_pending: bool = False
    _finalized: bool = False  # its end is recorded (by its worker, or by the watchdog that abandoned it)

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
            except BaseException as exc:  # noqa: BLE001 - a broken listener must not kill the job or the worker
                log.error("progress listener of %s failed: %s", self.id, describe(exc))


def _minimal_summary(job: Job) -> Job:
    """A summary built field by field, for when `job.summary()` itself fails."""
    done: Future = Future()
    done.set_result(None)
    return Job(kind=job.kind, run=_finished, id=job.id, state=job.state, future=done, sequence=job.sequence,
               interrupted=job.interrupted, skipped=job.skipped, enqueued_at=job.enqueued_at,
               finished_at=job.finished_at, error=job.error, timed_out=job.timed_out, _finalized=True)


class JobQueue:
    """FIFO of jobs with a bounded number waiting; `workers` worker threads run them, each one at a time, a
    watchdog keeps every worker alive and every running job within its deadline.

    `timeout()` gives the deadline in seconds of a job as it starts (0: none). A job still running
    `abandon_after` seconds after its deadline (a native call that cannot be interrupted) is failed and left to
    its thread, and a new worker takes that worker's place.
    """

    RECENT = 16  # finished jobs remembered for /internal/progress `completed` and the SSE stream

    def __init__(self, max_pending: int = 64, name: str = "worker", timeout: Callable[[], float] | None = None,
                 abandon_after: float = 10.0, watch_every: float = 0.25, workers: int = 1):
        self.max_pending = max_pending
        self.name = name
        self.timeout = timeout or (lambda: 0.0)
        self.abandon_after = abandon_after
        self.watch_every = watch_every
        self.restarts = 0  # worker threads started after the first (died or abandoned)
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self.workers = max(1, int(workers))
        self._running: list[Job | None] = [None] * self.workers  # the job each worker slot runs
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._watchers: dict[str, list[Callable[[Job], None]]] = {}  # listeners of task ids not submitted yet
        self._last: Job | None = None
        self.started: deque[tuple[int, str]] = deque(maxlen=1024)  # (arrival sequence, id) in start order
        self._cond = threading.Condition()
        self._sequence = itertools.count()
        self._closed = False
        self._stop = threading.Event()
        self._refuse: str | None = None  # why submit refuses every job (drain), None while accepting
        # Called with the job as it starts and as it ends (metrics, job logs); a failing hook is logged only.
        self.on_start: list[Callable[[Job], None]] = []
        self.on_end: list[Callable[[Job], None]] = []
        # Jobs running inside a lead job's batch (service/runtime/batching.py), by the lead's id.
        self._riders: dict[str, list[Job]] = {}
        self._generation = 0  # worker threads started so far; a slot's owner is the generation of its thread
        self._owner: list[int] = [0] * self.workers  # an abandoned thread sees its slot's owner change and leaves
        self._workers: list[threading.Thread] = []
        with self._cond:
            for slot in range(self.workers):
                self._start_worker(slot)
        self.restarts = 0
        self._watchdog = threading.Thread(target=self._watch, name=f"sdedge-{name}-watchdog", daemon=True)
        self._watchdog.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._refuse is not None:
                raise QueueClosed(self._refuse)
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"queue is full ({self.max_pending} jobs waiting)")
            job.sequence = next(self._sequence)
            job.enqueued_at = time.time()
            self._pending.append(job)
            self._jobs[job.id] = job
            watchers = self._watchers.pop(job.id, [])
            job.listeners.extend(watchers)
            self._cond.notify_all()  # the worker, or a batch gathering companions (take_riders)
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
                job._finalized = True
                self._jobs.pop(job.id, None)
                _resolve(job, None, JobCancelled(job.id))
                cancelled = True
            else:
                cancelled = False
        if cancelled:
            _call(self.on_end, job)
            job.notify()  # e.g. an SSE stream waiting for this job ends now
            return
        if job.state == JobState.RUNNING:
            job.interrupt()

    @property
    def _worker(self) -> threading.Thread:
        return self._workers[0]

    @property
    def current(self) -> Job | None:
        """The running job that started first (A1111 has one running job: with one worker, that one)."""
        running = [job for job in self._running if job is not None]
        if not running:
            return None
        return min(running, key=lambda job: (job.progress.time_start or 0.0, job.sequence))

    def running(self) -> list[Job]:
        """Every running job: the workers' own, then the jobs riding in their batches."""
        with self._cond:
            return self._running_locked()

    def _running_locked(self) -> list[Job]:
        own = sorted((job for job in self._running if job is not None),
                     key=lambda job: (job.progress.time_start or 0.0, job.sequence))
        return own + [rider for lead in own for rider in self._riders.get(lead.id, [])]

    @property
    def last(self) -> Job | None:
        """The running job, else the one that ran last (its flags and counters are what idle /progress shows)."""
        return self.current or self._last

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
        """A1111's /interrupt: whatever runs now ends after its current step (every job of a batch, every
        worker's job); queued jobs are untouched. Returns `current`."""
        job = self.current
        for running in self.running():
            running.interrupt()
        return job

    def skip_current(self) -> Job | None:
        job = self.current
        for running in self.running():
            running.skip()
        return job

    def _group_of(self, lead: Job) -> list[Job]:
        with self._cond:
            return [lead, *self._riders.get(lead.id, [])]

    def take_riders(self, lead: Job, accept: Callable[[list[Job], Job], bool], limit: int,
                    window: float) -> list[Job]:
        """Waiting jobs that `accept(taken, job)` takes into `lead`'s batch, in queue order, at most `limit`;
        waits up to `window` seconds for more to arrive. Each is marked running (its own start time and
        deadline) and must end through `finish_rider`."""
        deadline = time.monotonic() + max(0.0, window)
        taken: list[Job] = []
        with self._cond:
            while True:
                for job in list(self._pending):
                    if len(taken) >= limit:
                        break
                    if not accept(taken, job):
                        continue
                    self._pending.remove(job)
                    try:
                        runnable = job.future.set_running_or_notify_cancel()
                    except RuntimeError:
                        runnable = False
                    if not runnable:
                        job.state = JobState.CANCELLED
                        job._finalized = True
                        self._jobs.pop(job.id, None)
                        continue
                    now = time.time()
                    job.state = JobState.RUNNING
                    job.progress.time_start = now
                    job.progress.job_timestamp = time.strftime("%Y%m%d%H%M%S")
                    job.progress.job_count = -1
                    job.deadline = lead.deadline
                    self.started.append((job.sequence, job.id))
                    taken.append(job)
                remaining = deadline - time.monotonic()
                if len(taken) >= limit or remaining <= 0 or self._closed or self._refuse is not None:
                    break
                self._cond.wait(remaining)
            if taken:
                self._riders[lead.id] = list(taken)
        for job in taken:
            _call(self.on_start, job)
            job.notify()
        return taken

    def finish_rider(self, job: Job, result: Any, error: BaseException | None) -> None:
        """End a job that ran in another job's batch, as `_finish` ends the worker's own job."""
        with self._cond:
            for lead_id, riders in list(self._riders.items()):
                if job in riders:
                    riders.remove(job)
                    if not riders:
                        del self._riders[lead_id]
            if job._finalized:
                return
            if job.timed_out:
                result, error = None, JobTimeout(job.id, self._deadline_seconds(job))
            self._record_end(job, error)
        _resolve(job, result, error)
        _call(self.on_end, job)
        job.notify()

    def healthy(self) -> bool:
        """False while a worker thread is dead (until the watchdog restarts it) or a job is overdue."""
        if self._closed:
            return False
        now = time.time()
        overdue = any(job is not None and job.deadline is not None and now >= job.deadline for job in self._running)
        return all(worker.is_alive() for worker in self._workers) and not overdue

    def stop_accepting(self, reason: str) -> None:
        """From now on `submit` raises QueueClosed(reason); waiting and running jobs go on."""
        with self._cond:
            self._refuse = reason

    def fail_pending(self, error: Exception) -> list[Job]:
        """Every waiting job removed and answered with `error` (a drain's deadline passed before they ran)."""
        with self._cond:
            dropped = list(self._pending)
            self._pending.clear()
            for job in dropped:
                self._record_end(job, error)
        for job in dropped:
            _resolve(job, None, error)
            _call(self.on_end, job)
            job.notify()
        return dropped

    def idle(self) -> bool:
        """No job waiting or running."""
        with self._cond:
            return not self._pending and all(job is None for job in self._running)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._stop.set()
            self._cond.notify_all()

    # -- the worker -----------------------------------------------------------------------------------------

    def _start_worker(self, slot: int) -> None:
        """A new worker thread owns slot `slot` from now on (call with the lock held)."""
        self._generation += 1
        self.restarts += 1
        self._owner[slot] = self._generation
        worker = threading.Thread(target=self._work, args=(slot, self._generation),
                                  name=f"sdedge-{self.name}-{self._generation}", daemon=True)
        if slot < len(self._workers):
            self._workers[slot] = worker
        else:
            self._workers.append(worker)
        worker.start()

    def _work(self, slot: int, generation: int) -> None:
        while True:
            job = self._next(slot, generation)
            if job is None:
                return
            try:
                self._execute(job, slot, generation)
            except BaseException as exc:  # noqa: BLE001 - last resort: the job fails, the worker goes on
                log.error("worker failed around job %s: %s", job.id, describe(exc), exc_info=exc)
                self._finish(job, slot, generation, None, JobFailed(f"the worker failed: {describe(exc)}"))

    def _next(self, slot: int, generation: int) -> Job | None:
        """The next job to run, marked running; None when the queue closed or this worker was replaced."""
        while True:
            with self._cond:
                while not self._pending and not self._closed and generation == self._owner[slot]:
                    self._cond.wait()
                if self._closed or generation != self._owner[slot]:
                    return None
                job = self._pending.popleft()
                try:
                    runnable = job.future.set_running_or_notify_cancel()
                except RuntimeError:  # its future was resolved by someone else already
                    runnable = False
                if not runnable:  # cancelled through its future while waiting (e.g. asyncio.wrap_future)
                    job.state = JobState.CANCELLED
                    job._finalized = True
                    if self._jobs.get(job.id) is job:
                        del self._jobs[job.id]
                else:
                    now = time.time()
                    job.state = JobState.RUNNING
                    job.progress.time_start = now
                    job.progress.job_timestamp = time.strftime("%Y%m%d%H%M%S")
                    job.progress.job_count = -1
                    seconds = self._timeout_seconds()
                    job.deadline = now + seconds if seconds > 0 else None
                    self._running[slot] = job
                    self.started.append((job.sequence, job.id))
            if runnable:
                _call(self.on_start, job)
            job.notify()
            if runnable:
                return job

    def _timeout_seconds(self) -> float:
        try:
            seconds = float(self.timeout())
        except Exception as exc:  # a broken setting must not stop the queue
            log.error("job timeout unavailable: %s", describe(exc))
            return 0.0
        return seconds if seconds > 0 and seconds != float("inf") else 0.0

    def _execute(self, job: Job, slot: int, generation: int) -> None:
        error: BaseException | None = None
        result = None
        try:
            result = job.run(job)
        except BaseException as exc:  # noqa: BLE001 - the worker keeps serving whatever a job raises
            error = exc
        self._finish(job, slot, generation, result, error)

    def _finish(self, job: Job, slot: int, generation: int, result: Any, error: BaseException | None) -> None:
        """Record the job's end and hand its result to the caller. The job leaves /progress before its caller
        sees the result: a client that polls right after its response finds the server idle (A1111 ends its
        state before answering)."""
        with self._cond:
            if job._finalized:  # the watchdog abandoned it meanwhile and answered its caller already
                return
            if job.timed_out:
                result, error = None, JobTimeout(job.id, self._deadline_seconds(job))
            if error is not None and not isinstance(error, Exception):
                log.error("job %s raised %s", job.id, describe(error), exc_info=error)
            self._record_end(job, error)
            if generation == self._owner[slot] and self._running[slot] is job:
                self._running[slot] = None
        _resolve(job, result, error)
        _call(self.on_end, job)
        job.notify()

    def _record_end(self, job: Job, error: BaseException | None) -> None:
        """Mark the job finished and remember its summary (call with the lock held)."""
        job._finalized = True
        job.state = JobState.FAILED if error is not None else JobState.DONE
        job.error = describe(error) if error is not None else None
        job.finished_at = time.time()
        try:
            summary = job.summary()
        except BaseException as exc:  # noqa: BLE001
            log.error("summary of job %s failed: %s", job.id, describe(exc))
            summary = _minimal_summary(job)
        self._last = summary
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        self._recent[job.id] = summary
        self._recent.move_to_end(job.id)
        while len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)

    @staticmethod
    def _deadline_seconds(job: Job) -> float:
        start = job.progress.time_start or 0.0
        return (job.deadline - start) if job.deadline is not None else 0.0

    # -- the watchdog ---------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_every):
            try:
                self.supervise()
            except BaseException as exc:  # noqa: BLE001 - the watchdog itself must not die either
                log.error("job watchdog failed: %s", describe(exc), exc_info=exc)

    def supervise(self) -> None:
        """One watchdog round, per worker: restart a dead worker; interrupt a job at its deadline; abandon one
        that is still running `abandon_after` seconds later."""
        for slot in range(self.workers):
            self._supervise(slot)

    def _supervise(self, slot: int) -> None:
        now = time.time()
        with self._cond:
            if self._closed:
                return
            job = self._running[slot]
            worker = self._workers[slot]
            dead = not worker.is_alive()
        if dead:
            log.error("worker thread %s died; starting a new one", worker.name)
            self._replace_worker(slot, job,
                                 JobFailed("the worker thread died while running this job") if job else None)
            return
        if job is None or job.deadline is None or now < job.deadline:
            return
        seconds = self._deadline_seconds(job)
        if not job.timed_out:
            log.warning("job %s passed its deadline of %g s; interrupting it", job.id, seconds)
            for running in self._group_of(job):  # a batch shares its lead's deadline
                running.timed_out = True
                running.interrupt()
        elif now >= job.deadline + self.abandon_after:
            log.error("job %s did not stop %g s after its deadline; abandoning it and replacing the worker",
                      job.id, self.abandon_after)
            self._replace_worker(slot, job, JobTimeout(job.id, seconds, abandoned=True))

    def _replace_worker(self, slot: int, job: Job | None, error: BaseException | None) -> None:
        """Fail `job` (if its end is not recorded yet) and give the worker's slot to a new thread."""
        with self._cond:
            if self._closed:
                return
            if self._running[slot] is job:
                self._running[slot] = None
            record = job is not None and not job._finalized
            if record:
                self._record_end(job, error)
            ridden = self._riders.pop(job.id, []) if job is not None else []
            riders = [r for r in ridden if not r._finalized]
            rider_error: BaseException | None = None
            if riders:
                rider_error = error or JobFailed("the worker running this job's batch was replaced")
            for rider in riders:  # they ran in the abandoned job's batch: they end with it
                self._record_end(rider, rider_error)
            self._start_worker(slot)
        if record:
            _resolve(job, None, error)
            _call(self.on_end, job)
            job.notify()
        for rider in riders:
            _resolve(rider, None, rider_error)
            _call(self.on_end, rider)
            rider.notify()


def _call(hooks: list[Callable[[Job], None]], job: Job) -> None:
    for hook in list(hooks):
        try:
            hook(job)
        except BaseException as exc:  # noqa: BLE001 - metrics or a log line must never fail a job or the worker
            log.error("job hook failed for %s: %s", job.id, describe(exc))


def _resolve(job: Job, result: Any, error: BaseException | None) -> None:
    """Hand the result to the job's caller; a future resolved already (cancelled, abandoned) is left as it is."""
    try:
        if error is not None:
            job.future.set_exception(reportable(error))
        else:
            job.future.set_result(result)
    except (InvalidStateError, RuntimeError) as exc:
        log.warning("job %s: result not delivered (%s)", job.id, describe(exc))

"""What N workers (`--workers N`) share, and how they share it.

- Cores: each ONNX Runtime session of a server with N workers gets `threads_per_worker(N)` intra-op threads, so N
  jobs running at once use at most the machine's cores (N × threads ≤ cores); one worker keeps ORT's default (a
  thread per physical core), as before.
- A loaded pipeline: jobs run on one pipeline at once (ORT sessions are safe for concurrent `run`), but the VAE file
  it decodes with (service/runtime/vae.py selects it on the pipeline), its LoRA sessions and its tiled sessions are
  the pipeline's state. `PipelineModes` lets jobs share a checkpoint only while they want the same such
  configuration; a job wanting another waits until they end. Plain jobs (no VAE file, LoRA or tiling) all share.
- The memory budget: `RunningBudget` starts a job only while the estimates of all running jobs together fit
  `--memory-budget` (admission.py refuses at submit a job that can never fit alone; a job alone always starts).
- The loaded checkpoints: a running job pins the ones it uses, so the LRU (model_cache.py) never evicts them.

With one worker none of these ever waits: the queue runs one job at a time, as it always did.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, as a container's cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """ORT intra-op threads per session: 0 (ORT's default) with one worker, else cores // workers (at least 1)."""
    if workers <= 1:
        return 0
    return max(1, (cores or available_cores()) // workers)


def _gone(owner: Any) -> bool:
    """A holder whose job has ended without leaving (the watchdog abandoned it to its stuck thread) holds nothing:
    the jobs after it must not wait for a thread that may never return."""
    return bool(getattr(owner, "_finalized", False))


_POLL_S = 0.5  # how often a waiting job looks again for holders the watchdog abandoned


class _Holds:
    """Holds that jobs take once nothing running stands in their way, and give back when they end: the waiting,
    the taking and the giving back that `PipelineModes` and `RunningBudget` share (each says what stands in the
    way). A hold is (owner, what it holds); the holds of jobs the watchdog abandoned no longer count."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holds: list[tuple[Any, Any]] = []

    def _live(self) -> list[Any]:
        """What the running jobs hold (the caller holds `_cond`)."""
        return [held for owner, held in self._holds if not _gone(owner)]

    @contextmanager
    def _hold_when_free(self, hold: tuple[Any, Any], blocked: Callable[[], bool]) -> Iterator[None]:
        """Wait while `blocked()` (asked under `_cond`; looked at again every _POLL_S for abandoned holders), then
        keep `hold` until the block ends."""
        with self._cond:
            while blocked():
                self._cond.wait(_POLL_S)
            self._holds.append(hold)
        try:
            yield
        finally:
            with self._cond:
                self._holds = [h for h in self._holds if h is not hold]
                self._cond.notify_all()


class PipelineModes(_Holds):
    """Which configuration (VAE file, LoRA set, tiling: a `mode`) the jobs running on each checkpoint use.
    Its holds are (owner, [(checkpoint, mode)])."""

    def _conflicts(self, uses: Sequence[tuple[Hashable, Any]]) -> bool:
        for held in self._live():
            for entry, mode in uses:
                if any(entry == other and mode != other_mode for other, other_mode in held):
                    return True
        return False

    @contextmanager
    def hold(self, uses: Sequence[tuple[Hashable, Any]], owner: Any = None) -> Iterator[None]:
        """Wait until no running job uses one of these checkpoints in another mode, then hold them all (taken
        at once, so two jobs can never hold one each and wait for the other)."""
        with self._hold_when_free((owner, list(uses)), lambda: self._conflicts(uses)):
            yield


class RunningBudget(_Holds):
    """The memory the running jobs' estimates add up to (engine/memory.py). Its holds are (owner, bytes)."""

    @property
    def used(self) -> int:
        with self._cond:
            return sum(self._live())

    @contextmanager
    def reserve(self, needed: int, budget: int, owner: Any = None) -> Iterator[None]:
        """Wait until `needed` fits beside the running jobs (or none runs), then count it until the job ends."""
        def blocked() -> bool:
            running = self._live()
            return bool(running) and sum(running) + needed > budget

        with self._hold_when_free((owner, needed), blocked):
            yield


def mode_of(generation: Any) -> tuple:
    """The pipeline configuration a Generation runs with (what `Generation.run_alone` sets on the pipeline)."""
    plan = generation.plan
    hires = getattr(plan, "hires", None)
    return (getattr(generation, "vae", None), getattr(generation, "hires_vae", None),
            tuple(getattr(plan, "networks", ())), tuple(getattr(hires, "networks", ()) if hires else ()),
            bool(getattr(plan, "tiling", False)))


def entries_of(generation: Any) -> list:
    """The checkpoints a Generation runs on: its own, then its hires and refiner checkpoints."""
    seen = []
    for entry in (generation.entry, getattr(generation, "hires", None), getattr(generation, "refiner", None)):
        if entry is not None and entry not in seen:
            seen.append(entry)
    return seen


@contextmanager
def job_resources(state: Any, entries: Sequence[Hashable], mode: Any, needed: int, owner: Any = None,
                  ) -> Iterator[None]:
    """Around one job's run on its worker: its checkpoints in its mode, pinned in the LRU, its memory counted.
    `owner` is the Job: once the watchdog abandons it, what it holds no longer makes others wait."""
    from service.runtime import admission

    with ExitStack() as stack:
        modes = getattr(state, "pipeline_modes", None)
        if modes is not None:
            stack.enter_context(modes.hold([(entry, mode) for entry in entries], owner))
        pinned = getattr(state.models, "pinned", None)
        if pinned is not None:
            stack.enter_context(pinned(entries))
        budget = getattr(state, "running_budget", None)
        if budget is not None:
            stack.enter_context(budget.reserve(needed, admission.budget_of(state), owner))
        yield

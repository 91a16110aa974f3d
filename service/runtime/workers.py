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
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
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


class PipelineModes:
    """Which configuration (VAE file, LoRA set, tiling: a `mode`) the jobs running on each checkpoint use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: dict[Hashable, tuple[Any, int]] = {}  # checkpoint → (mode, jobs holding it)

    def _conflicts(self, uses: Sequence[tuple[Hashable, Any]]) -> bool:
        for entry, mode in uses:
            held = self._active.get(entry)
            if held is not None and held[1] > 0 and held[0] != mode:
                return True
        return False

    @contextmanager
    def hold(self, uses: Sequence[tuple[Hashable, Any]]) -> Iterator[None]:
        """Wait until no running job uses one of these checkpoints in another mode, then hold them all (taken
        at once, so two jobs can never hold one each and wait for the other)."""
        with self._cond:
            while self._conflicts(uses):
                self._cond.wait()
            for entry, mode in uses:
                held = self._active.get(entry)
                self._active[entry] = (mode, (held[1] if held is not None else 0) + 1)
        try:
            yield
        finally:
            with self._cond:
                for entry, _ in uses:
                    mode, count = self._active[entry]
                    if count <= 1:
                        del self._active[entry]
                    else:
                        self._active[entry] = (mode, count - 1)
                self._cond.notify_all()


class RunningBudget:
    """The memory the running jobs' estimates add up to (engine/memory.py)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.used = 0
        self.jobs: Counter[int] = Counter()

    @contextmanager
    def reserve(self, needed: int, budget: int) -> Iterator[None]:
        """Wait until `needed` fits beside the running jobs (or none runs), then count it until the job ends."""
        with self._cond:
            while self.jobs.total() and self.used + needed > budget:
                self._cond.wait()
            self.used += needed
            self.jobs[needed] += 1
        try:
            yield
        finally:
            with self._cond:
                self.used -= needed
                self.jobs[needed] -= 1
                if self.jobs[needed] <= 0:
                    del self.jobs[needed]
                self._cond.notify_all()


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
def job_resources(state: Any, entries: Sequence[Hashable], mode: Any, needed: int) -> Iterator[None]:
    """Around one job's run on its worker: its checkpoints in its mode, pinned in the LRU, its memory counted."""
    from service.runtime import admission

    with ExitStack() as stack:
        modes = getattr(state, "pipeline_modes", None)
        if modes is not None:
            stack.enter_context(modes.hold([(entry, mode) for entry in entries]))
        pinned = getattr(state.models, "pinned", None)
        if pinned is not None:
            stack.enter_context(pinned(entries))
        budget = getattr(state, "running_budget", None)
        if budget is not None:
            stack.enter_context(budget.reserve(needed, admission.budget_of(state)))
        yield

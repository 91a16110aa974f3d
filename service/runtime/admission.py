"""Admission control: a job whose estimated peak memory (engine/memory.py) can never fit is refused at submit.

The budget (`--memory-budget`, `ServerConfig.memory_budget`) is what one job may use on top of the loaded server.
Its default is taken from the machine when the server starts: 75 % of MemTotal, at most MemAvailable, minus the
process's RSS then. A job above the budget is a 413 naming the estimate and the limit. A job within it is queued;
with one worker jobs never add up; with `--workers N` a job starts only while its estimate and those of the running
jobs together fit the budget (service/runtime/workers.py: RunningBudget). When the job's turn comes and the machine has less free
memory than its estimate (other processes), the worker waits for memory (up to `WAIT_FOR_MEMORY_S`, then runs it
anyway: the estimate has a safety margin and the budget already said it fits).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from engine.bundle import load_bundle
from engine.images import DEFAULT_TILING
from engine.memory import GiB, JobSize, ModelProfile, estimate_job_bytes
from engine.plan import GenerationPlan
from service.a1111.errors import JobTooLarge

log = logging.getLogger(__name__)

WAIT_FOR_MEMORY_S = 60.0
_POLL_S = 0.5
_profiles: dict[Path, ModelProfile] = {}


def meminfo_bytes(name: str) -> int | None:
    """A /proc/meminfo field in bytes (None off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def default_budget_bytes() -> int:
    """75 % of the machine's RAM, at most what is available now, minus what this process already holds."""
    total = meminfo_bytes("MemTotal")
    if total is None:
        return 8 * GiB
    available = meminfo_bytes("MemAvailable") or total
    return max(0, int(min(0.75 * total, available)) - process_rss_bytes())


def parse_budget(text: str) -> int:
    """`--memory-budget`: bytes with an optional K/M/G/T suffix (binary units), e.g. `12G`, `512M`."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(text[-1:], 1)
    number = float(text[:-1] if text[-1:] in units else text)
    if not number > 0:
        raise ValueError(f"memory budget must be positive, got {text!r}")
    return int(number * scale)


def profile_of(path: Path, pipeline=None) -> ModelProfile:
    if path not in _profiles:
        try:
            bundle = pipeline.bundle if pipeline is not None else load_bundle(path)
            _profiles[path] = ModelProfile.of_bundle(bundle)
        except (OSError, ValueError) as exc:  # the job itself will report the unreadable bundle
            log.warning("%s: no memory profile (%s); estimating with SD 1.x widths", path, exc)
            return ModelProfile()
    return _profiles[path]


def job_size(plan: GenerationPlan) -> JobSize:
    hires = plan.hires
    return JobSize(width=plan.width, height=plan.height, batch_size=plan.batch_size,
                   hires_width=hires.width if hires else None, hires_height=hires.height if hires else None,
                   encodes=plan.img2img is not None)


def estimate(plan: GenerationPlan, profile: ModelProfile) -> int:
    f = profile.vae_scale_factor
    # A seamless-tiling job's VAE runs whole (engine/images.py: wraps).
    threshold = None if getattr(plan, "tiling", False) else DEFAULT_TILING.threshold * f * f
    return estimate_job_bytes(profile, job_size(plan), vae_tile_threshold_px=threshold,
                              vae_tile_px=(DEFAULT_TILING.tile * f) ** 2)


def admit(plan: GenerationPlan, profile: ModelProfile, budget: int, extra: int = 0) -> int:
    """The job's estimate (plus `extra` bytes it makes resident); JobTooLarge if it exceeds the budget."""
    needed = estimate(plan, profile) + extra
    if needed > budget:
        hires = f" (hires {plan.hires.width}×{plan.hires.height})" if plan.hires else ""
        raise JobTooLarge(needed, budget, f"a {plan.width}×{plan.height}{hires} job with batch size "
                                          f"{plan.batch_size}")
    return needed


def wait_for_memory(needed: int, timeout: float = WAIT_FOR_MEMORY_S) -> bool:
    """On the worker, before a job runs: wait until the machine has `needed` bytes available. True if it has."""
    deadline = time.monotonic() + timeout
    while True:
        available = meminfo_bytes("MemAvailable")
        if available is None or available >= needed:
            return True
        if time.monotonic() >= deadline:
            log.warning("job needs ~%.2f GiB, %.2f GiB available after waiting %.0f s; running it anyway",
                        needed / GiB, available / GiB, timeout)
            return False
        time.sleep(_POLL_S)


_budgets: dict[int, int] = {}


def budget_of(state) -> int:
    """The configured budget, else the machine's default, taken once per server state (at its first job, so
    the loaded model is already in the process's RSS and not counted twice)."""
    if state.config.memory_budget is not None:
        return int(state.config.memory_budget)
    return _budgets.setdefault(id(state.config), default_budget_bytes())


def check(state, entry, plan: GenerationPlan) -> int:
    """Submit-time check of a planned job on checkpoint `entry`: its estimate, or JobTooLarge (413)."""
    pipeline = state.models.pipeline_of(entry)
    return admit(plan, profile_of(Path(entry.path), pipeline), budget_of(state),
                 tiled_sessions_bytes(Path(entry.path), pipeline) if getattr(plan, "tiling", False) else 0)


def tiled_sessions_bytes(path: Path, pipeline=None) -> int:
    """What the first seamless-tiling job adds to the server: a second UNet and VAE session, about their weights'
    size (engine/tiling.py; SD 1.5 fp32 on CPU: 3.6 GB measured, 3.8 GB of weights); 0 once they exist."""
    if pipeline is not None and getattr(pipeline, "_tiled", None) is not None:
        return 0
    from engine.tiling import TILED_COMPONENTS

    total = 0
    for component in TILED_COMPONENTS:
        files = [p for p in (path / component).glob("model.onnx*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total

"""`python -m benchmarks.run`: sdedge, diffusers (torch) and optimum's ORTStableDiffusionPipeline on the demo model.

One process, the same weights, prompt, initial latents and A1111 Euler sigmas for all; times are medians of a
few end-to-end txt2img calls (text encoder, steps with CFG, VAE decode, PIL image) after one warm-up call.
sdedge runs first, before torch is imported, so its peak RSS is that of a torch-free process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, load_average, peak_rss_mib, reset_peak_rss
from benchmarks.models import ensure_models
from benchmarks.runners import DiffusersRunner, Job, OptimumRunner, SdedgeRunner

PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
NEGATIVE = "blurry, low quality"
CFG = 7.0
REFERENCE = "sdedge"
HEAVY_LOAD_PER_CPU = 0.25  # load average above this per CPU at start or end: "taken under load"


@dataclass(frozen=True)
class Timing:
    pipeline: str
    size: int
    median_s: float
    runs_s: tuple[float, ...]
    max_pixel_diff: int | None  # vs sdedge on our bundle, in 8-bit levels


@dataclass(frozen=True)
class Phase:
    pipeline: str
    load_s: float
    peak_rss_mib: float | None
    torch_imported: bool


class Report:
    """Prints as it goes and keeps every line for RESULTS.md's raw section."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def run_phase(name: str, factory: Callable[[], Callable[[Job], np.ndarray]], jobs: dict[int, Job],
              repeats: dict[int, int], budget_s: float, reference: dict[int, np.ndarray], say: Report,
              extra: Callable[[object], None] | None = None) -> tuple[Phase, list[Timing]]:
    reset_peak_rss()
    start = time.perf_counter()
    runner = factory()
    load_s = time.perf_counter() - start
    timings = []
    for size, job in jobs.items():
        image = runner(job)  # warm-up: session/allocator set-up, lazy imports
        runs: list[float] = []
        while len(runs) < repeats[size] and sum(runs) < budget_s:
            start = time.perf_counter()
            image = runner(job)
            runs.append(time.perf_counter() - start)
        if name == REFERENCE:
            reference[size] = image
        diff = int(np.abs(image.astype(np.int16) - reference[size].astype(np.int16)).max()) if size in reference else None
        timing = Timing(name, size, statistics.median(runs), tuple(runs), diff)
        timings.append(timing)
        say(f"  {name:<26} {size:>4} px  median {timing.median_s * 1e3:9.1f} ms  "
            f"runs {' '.join(f'{r * 1e3:.1f}' for r in runs)}  max|Δ| vs sdedge {diff} levels")
    if extra is not None:
        extra(runner)
    phase = Phase(name, load_s, peak_rss_mib(), "torch" in sys.modules)
    say(f"  {name:<26} load {load_s:.2f} s  peak RSS {phase.peak_rss_mib:.0f} MiB  torch imported: {phase.torch_imported}")
    del runner
    gc.collect()
    return phase, timings


def make_jobs(sigmas: np.ndarray, sizes: list[int]) -> dict[int, Job]:
    jobs = {}
    for size in sizes:
        noise = np.random.default_rng(size).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
        jobs[size] = Job(PROMPT, NEGATIVE, size, size, CFG, tuple(float(s) for s in sigmas), noise)
    return jobs


def ratio_table(timings: list[Timing], sizes: list[int], phases: list[Phase], steps: int) -> list[str]:
    by = {(t.pipeline, t.size): t for t in timings}
    names = list(dict.fromkeys(t.pipeline for t in timings))
    rss = {p.pipeline: p.peak_rss_mib for p in phases}
    head = "| pipeline | " + " | ".join(f"{s} px: median (min), per step" for s in sizes)
    head += " | " + " | ".join(f"{s} px: time ratio sdedge / this" for s in sizes)
    head += " | peak RSS | max abs diff vs sdedge |"
    rows = [head, "|" + "---|" * (2 * len(sizes) + 3)]
    for name in names:
        cells = []
        for s in sizes:
            t = by[(name, s)]
            cells.append(f"{t.median_s * 1e3:.0f} ms ({min(t.runs_s) * 1e3:.0f} ms), {t.median_s * 1e3 / steps:.1f} ms")
        for s in sizes:
            cells.append(f"{by[(REFERENCE, s)].median_s / by[(name, s)].median_s:.2f}")
        diffs = ", ".join(f"{by[(name, s)].max_pixel_diff}" for s in sizes)
        rss_cell = f"{rss[name]:.0f} MiB" if rss.get(name) else "n/a"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {rss_cell} | {diffs} (8-bit levels) |")
    return rows


def markdown(args, machine: dict, loads: dict, phases: list[Phase], timings: list[Timing], overhead: dict,
             say: Report) -> str:
    cpus = machine["usable_cpus"]
    under_load = max(loads["start"][0], loads["end"][0]) > HEAVY_LOAD_PER_CPU * cpus
    v = machine["versions"]
    out = [
        "# Benchmark results",
        "",
        f"Written by `{command_line(args)}` (what `make bench ARGS=...` runs) on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Regenerate rather than edit.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} — {machine['logical_cpus']} logical CPUs, {cpus} usable by this process"
        f" (AVX-512: {'yes' if machine['cpu_flags_avx512f'] else 'no'}); no GPU",
        f"- RAM: {machine['ram_gib']} GiB; Linux {machine['kernel']}; Python {machine['python']}",
        f"- numpy {v['numpy']}, onnxruntime {v['onnxruntime']}, tokenizers {v['tokenizers']}, torch {v['torch']}, "
        f"diffusers {v['diffusers']}, transformers {v['transformers']}, optimum-onnx {v['optimum-onnx']}, "
        f"optimum {v['optimum']}",
        f"- Threads: {args.threads} for every pipeline (ORT intra-op threads / `torch.set_num_threads`)",
        f"- Load average (1/5/15 min): {fmt_load(loads['start'])} at start, {fmt_load(loads['end'])} at end",
        "",
    ]
    if args.note:
        out += ["## Notes", "", *(f"- {note}" for note in args.note), ""]
    if under_load:
        out += [
            f"**Taken under load.** Other engineers' jobs shared these {cpus} cores while this ran (load average "
            f"above {HEAVY_LOAD_PER_CPU} per CPU), so absolute times are pessimistic and noisy; the runs column "
            "of the raw output shows the spread. Ratios between pipelines are more trustworthy than times.",
            "",
        ]
    out += [
        "## Workload",
        "",
        f"The tiny random-weight demo model (`export/configs/tiny-sd`), txt2img, batch 1, {args.steps} Euler steps "
        f"with CFG {CFG} (UNet batch 2 per step), A1111's default sigmas, the same initial latents for every "
        "pipeline. Time = median (minimum in brackets) of the timed runs of one end-to-end call (text encoder, "
        "steps, VAE decode, PIL image) after one warm-up call; per step = median / steps (so it includes the text "
        f"encoder's and the VAE's share). Up to {args.repeats} timed runs (at least 5 at 64 px), fewer once a "
        f"case's runs took {args.budget:.0f} s; the raw output lists every run.",
        "",
        "- **sdedge**: this repo's engine (NumPy loop + ONNX Runtime) on our bundle.",
        "- **sdedge (optimum bundle)**: the same engine on `optimum-cli export onnx`'s export of the same weights.",
        "- **diffusers (torch)**: `StableDiffusionPipeline` with `EulerDiscreteScheduler(sigmas=...)`, fp32.",
        "- **optimum ORT**: optimum's `ORTStableDiffusionPipeline` (diffusers' loop, ORT sessions) on the optimum "
        "export, same scheduler.",
        "",
        "Peak RSS is the process's high-water mark during that pipeline's phase (reset before it via "
        "`/proc/self/clear_refs`); the process keeps libraries loaded by earlier phases, so only sdedge's row "
        "(run first, torch not imported) is a standalone figure.",
        "",
        "## Results",
        "",
        "A time ratio below 1 means sdedge (on our bundle) took less time than that pipeline.",
        "",
        *ratio_table(timings, args.sizes, phases, args.steps),
        "",
        "## Per-step overhead of the NumPy loop",
        "",
        f"Latent {'×'.join(map(str, overhead['latent_shape']))} (512 px), {overhead['steps']} Euler steps with a "
        "no-op denoiser, against one demo UNet call with CFG (batch 2, 77 tokens) on ONNX Runtime: "
        f"{overhead['unet_call_ms_batch2']:.2f} ms.",
        "",
        "| per step | time | fraction of one UNet call |",
        "|---|---|---|",
        f"| Euler update only | {overhead['sampler_ms_per_step']:.3f} ms | {overhead['sampler_fraction_of_unet_call']:.3%} |",
        f"| + A1111's per-step noise draw (NV Philox) | {overhead['sampler+rng_ms_per_step']:.3f} ms | "
        f"{overhead['sampler+rng_fraction_of_unet_call']:.2%} |",
        f"| + CFG denoiser around a no-op UNet (c_in, batching, guidance) | "
        f"{overhead['sampler+rng+cfg_ms_per_step']:.3f} ms | {overhead['sampler+rng+cfg_fraction_of_unet_call']:.2%} |",
        "",
        "The host work per step does not depend on the model, while a real SD 1.x UNet call costs far more than "
        "the demo's 1.4 M-parameter one, so these fractions are upper bounds for real checkpoints.",
        "",
        "## Raw output",
        "",
        "```",
        *say.lines,
        "```",
        "",
    ]
    return "\n".join(out)


def command_line(args) -> str:
    """This run's command; the text of --note options is shown in the Notes section instead."""
    parts = ["python -m benchmarks.run", "--sizes", *map(str, args.sizes), "--steps", str(args.steps),
             "--repeats", str(args.repeats), "--budget", f"{args.budget:g}", "--threads", str(args.threads)]
    if args.write:
        parts += ["--write", str(args.write)]
    parts += ["--note ..."] * len(args.note)
    return " ".join(parts)


def fmt_load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (small sizes get at least 5)")
    parser.add_argument("--budget", type=float, default=25.0,
                        help="stop timing a pipeline at a size once its timed runs took this many seconds")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--write", type=Path, help="write a RESULTS.md (machine, table, raw output) here")
    parser.add_argument("--json", type=Path, help="write the raw numbers as JSON here")
    parser.add_argument("--note", action="append", default=[], help="a remark for RESULTS.md (repeatable)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[256, 512, 768, 1024, 2048],
                        help="sizes of the peak-RSS table on the shapes model (none: skip it)")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--turbo-size", type=int, default=256,
                        help="size of the cfg 1 vs cfg 7 (Turbo) table on the shapes model (0: skip it)")
    parser.add_argument("--concurrency-requests", type=int, default=16,
                        help="txt2img requests of the 1-vs-4-clients table on the shapes model (0: skip it)")
    parser.add_argument("--lora-rank", type=int, default=8,
                        help="rank of the LoRA switching table on the demo bundle (0: skip it; the full-size table: "
                             "python -m benchmarks.lora_switch under the full-size lock)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    say = Report()
    machine = describe()
    loads = {"start": load_average()}
    say(f"machine: {json.dumps(machine)}")
    say(f"load average at start: {fmt_load(loads['start'])}; threads per pipeline: {args.threads}")
    models = ensure_models()
    say(f"models: {models.bundle.parent}")
    repeats = {s: max(args.repeats, 5) if s <= 128 else args.repeats for s in args.sizes}

    # A1111's "Euler" + Automatic schedule, as the engine computes it; the other pipelines are handed these.
    jobs = make_jobs(SdedgeRunner(models.bundle, args.threads).pipeline.sigmas("Euler", "automatic", args.steps),
                     args.sizes)
    reference: dict[int, np.ndarray] = {}
    overhead: dict = {}
    phases, timings = [], []

    def measure_overhead(runner: SdedgeRunner) -> None:
        from benchmarks.overhead import measure

        overhead.update(measure(runner.pipeline, steps=args.steps))
        say(f"  numpy loop overhead at 512 px: {json.dumps(overhead)}")

    plan: list[tuple[str, Callable, Callable | None]] = [
        ("sdedge", lambda: SdedgeRunner(models.bundle, args.threads), measure_overhead),
        ("sdedge (optimum bundle)", lambda: SdedgeRunner(models.optimum, args.threads), None),
        ("diffusers (torch)", lambda: DiffusersRunner(models.diffusers, args.threads), None),
        ("optimum ORT", lambda: OptimumRunner(models.optimum, args.threads), None),
    ]
    for name, factory, extra in plan:
        say(f"{name}:")
        phase, phase_timings = run_phase(name, factory, jobs, repeats, args.budget, reference, say, extra)
        phases.append(phase)
        timings += phase_timings

    if args.memory_sizes:
        from benchmarks.memory import run as memory_run

        say()
        memory_run(models.shapes, args.memory_sizes, args.memory_steps, big_steps=1, say=say)
    if args.turbo_size:
        from benchmarks.turbo import run as turbo_run

        say()
        turbo_run(models.shapes, say, size=args.turbo_size, threads=args.threads)
    if args.concurrency_requests:
        from benchmarks.concurrency import run as concurrency_run

        concurrency_run(models.shapes, say=say, requests_n=args.concurrency_requests)
    if args.lora_rank:
        from benchmarks.lora_switch import run as lora_run

        say()
        lora_run(models.bundle, args.lora_rank, say=say, levels=("all", "extended"), unet_size=512)
    loads["end"] = load_average()
    say(f"load average at end: {fmt_load(loads['end'])}")
    say()
    for line in ratio_table(timings, args.sizes, phases, args.steps):
        say(line)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine, "loads": loads, "threads": args.threads, "steps": args.steps,
            "phases": [asdict(p) for p in phases], "timings": [asdict(t) for t in timings], "overhead": overhead,
        }, indent=2))
    if args.write:
        args.write.write_text(markdown(args, machine, loads, phases, timings, overhead, say))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

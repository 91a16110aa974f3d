"""Turbo / LCM-style generation at `cfg_scale` 1 against CFG 7 (issue 14): time per image and the UNet batch of
each call, same steps, same sampler (Euler a), same seed, on the shapes model. At cfg 1 the engine skips the
unconditional half (U + 1·(C − U) = C, engine/denoiser.py), so each UNet call carries half the batch.
256 px by default (not the shapes model's native 64 px, where the text encoder and VAE hide the UNet; not 512 px,
which takes over a minute on this shared machine); the image speed-up is below the UNet's because the VAE decode
costs the same at both scales.
`python -m benchmarks.turbo`, and a table of `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"
SAMPLER = "Euler a"
CFG_SCALES = (7.0, 1.0)


@dataclass(frozen=True)
class TurboRow:
    cfg_scale: float
    median_s: float
    runs_s: tuple[float, ...]
    unet_calls: int
    unet_batches: tuple[int, ...]  # distinct batch sizes of the UNet's `sample` input in the timed image
    unet_s: float  # time spent in UNet calls in the median run


class _CountingBackend:
    """Records each UNet call's batch size and time; everything else passes through."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[int] = []
        self.unet_s = 0.0

    def run(self, component, inputs):
        if component != "unet":
            return self.inner.run(component, inputs)
        self.batches.append(int(inputs["sample"].shape[0]))
        start = time.perf_counter()
        out = self.inner.run(component, inputs)
        self.unet_s += time.perf_counter() - start
        return out

    def reset(self) -> None:
        self.batches, self.unet_s = [], 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)


def measure(bundle: Path, size: int, steps: int, repeats: int, threads: int) -> list[TurboRow]:
    from engine.backend import OrtBackend
    from engine.bundle import load_bundle
    from engine.pipeline import Pipeline
    from engine.plan import GenerationPlan

    loaded = load_bundle(bundle)
    backend = _CountingBackend(OrtBackend(loaded, "cpu", intra_op_threads=threads))
    pipeline = Pipeline(loaded, backend)
    rows = []
    for cfg in CFG_SCALES:
        plan = GenerationPlan(prompts=(PROMPT,), negative_prompts=(NEGATIVE,), seeds=(1,), subseeds=(1,),
                              width=size, height=size, steps=steps, cfg_scale=cfg, sampler=SAMPLER,
                              scheduler="automatic")
        pipeline.txt2img(plan)  # warm-up
        runs, unet_s, batches = [], [], []
        for _ in range(repeats):
            backend.reset()
            start = time.perf_counter()
            pipeline.txt2img(plan)
            runs.append(time.perf_counter() - start)
            unet_s.append(backend.unet_s)
            batches = list(backend.batches)
        median = statistics.median(runs)
        rows.append(TurboRow(cfg, median, tuple(runs), len(batches), tuple(sorted(set(batches))),
                             unet_s[runs.index(sorted(runs)[len(runs) // 2])]))
    return rows


def table(rows: list[TurboRow], size: int, steps: int) -> list[str]:
    by = {r.cfg_scale: r for r in rows}
    base = by[CFG_SCALES[0]]
    out = [f"| cfg_scale | time per image ({size} px, {steps} steps, {SAMPLER}) | UNet calls | UNet batch per call | "
           "time in UNet | image speed-up vs cfg 7 | UNet speed-up vs cfg 7 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.cfg_scale:g} | {r.median_s * 1e3:.0f} ms (runs {' '.join(f'{x * 1e3:.0f}' for x in r.runs_s)}) "
                   f"| {r.unet_calls} | {', '.join(map(str, r.unet_batches))} | {r.unet_s * 1e3:.0f} ms | "
                   f"{base.median_s / r.median_s:.2f}× | {base.unet_s / r.unet_s:.2f}× |")
    return out


def run(bundle: Path, say: Callable[[str], None], size: int = 256, steps: int = 4, repeats: int = 3,
        threads: int = 2) -> list[TurboRow]:
    say(f"turbo: cfg_scale 1 vs 7 on {bundle.name}, {size} px, {steps} steps, {SAMPLER}, batch 1")
    rows = measure(bundle, size, steps, repeats, threads)
    for line in table(rows, size, steps):
        say(line)
    return rows


def main(argv: list[str] | None = None) -> int:
    import os

    from benchmarks.models import ensure_models

    parser = argparse.ArgumentParser(prog="python -m benchmarks.turbo", description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    run(ensure_models().shapes, print, args.size, args.steps, args.repeats, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where OpenVINO's memory goes at one size, part by part (issue 16's 1024 px peak).

`python -m benchmarks.ov_memory --bundle B --size 1024 unet release:unet vae_decoder` runs, in one fresh process,
the listed steps in order and prints one JSON line: RSS (anonymous / file-mapped) after each step and each step's
own peak (VmHWM reset before it), so e.g. "UNet then decoder" against "decoder alone" shows whether the UNet's
buffers are still resident during the decode. Steps:
  text_encoder | unet | vae_decoder   one call of that component (UNet on the CFG batch of 2), through the backend
  release:C    CompiledModel.release_memory() on C's compiled models (their intermediate buffers), unguarded:
               with --chunked it corrupts the next outputs (OpenVINO 2026.4, the Loop), which this shows
  drop:C       the backend forgets C's compiled models (del + gc), as `OpenVinoBackend.release(C)`
  trim         gc + malloc_trim (engine.backend.release_memory)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import load_average, peak_rss_mib, reset_peak_rss
from benchmarks.memory_full import feeds, status_mib

COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def run_step(backend, bundle, size: int, step: str) -> dict:
    """One step; returns what it did besides the memory (seconds, an output checksum)."""
    action, _, component = step.partition(":")
    if action in COMPONENTS:
        out = backend.run(action, feeds(action, bundle, size))
        first = next(iter(out.values()))
        # Checksums, to compare runs of two settings (e.g. chunked vs whole attention) on the same inputs.
        return {"sum": float(first.astype(np.float64).sum()), "sha1": hashlib.sha1(first.tobytes()).hexdigest()[:12]}
    if action == "release":
        for compiled in backend._compiled.get(component, {}).values():
            compiled.release_memory()
        return {}
    if action == "drop":
        backend.release(component)
        gc.collect()
        return {}
    if action == "trim":
        from engine.backend import release_memory

        release_memory()
        return {}
    raise SystemExit(f"unknown step {step!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ov_memory")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunked", action="store_true",
                        help="compile the exported chunked attention as is (its Loop), as before issue 16's fix")
    parser.add_argument("--release-above", type=int, default=None,
                        help="latent h·w above which buffers are released (default: the backend's)")
    parser.add_argument("steps", nargs="+")
    args = parser.parse_args(argv)
    from engine.bundle import load_bundle
    from engine.openvino_backend import OpenVinoBackend

    bundle = load_bundle(args.bundle)
    options = {} if args.release_above is None else {"release_above": args.release_above}
    backend = OpenVinoBackend(bundle, args.precision, args.threads, whole_attention=not args.chunked, **options)
    rows = [{"step": "start", **status_mib()}]
    for step in args.steps:
        reset_peak_rss()
        start = time.perf_counter()
        extra = run_step(backend, bundle, args.size, step)
        seconds = round(time.perf_counter() - start, 2)
        rows.append({"step": step, "seconds": seconds, "step_peak": round(peak_rss_mib() or 0, 1), **status_mib(),
                     **extra})
    print(json.dumps({"size": args.size, "precision": args.precision, "chunked": args.chunked,
                      "compiles": backend.compiles, "releases": backend.releases,
                      "load": load_average(), "steps": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

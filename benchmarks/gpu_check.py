"""`make gpu-check`: on a machine with an NVIDIA GPU, everything GPU-side in one run and one table.

For the demo bundle and (if present) a full-size model: the export variants (`python -m export variant`), the
UNet's TensorRT engines for the 512 px profile, the validation gate of each GPU backend against ONNX Runtime fp32
on the CPU (per-UNet-call cosine on the reference's own inputs, as engine/quality_gate.py measures it), and the
time of one 512 px, 20-step Euler image per backend (median of 3 after a warm-up), with the host↔device copies
per step of the IO-binding paths; then every `gpu`-marked test.

Without a GPU it prints why and exits 2: a skipped check must not read as a passed one (CI treats 0 as
"the GPU paths work"). Exit 1: a gate failed or a step errored; 0: all passed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = 2
VARIANT_FLAGS = ("--fp16", "--ort-cuda", "--trt-ready")


@dataclass
class Row:
    model: str
    backend: str
    graph: str = ""
    min_cosine: float | None = None
    psnr_db: float | None = None
    image_s: float | None = None
    unet_ms: float | None = None
    copies: str = ""
    note: str = ""

    @property
    def passed(self) -> bool:
        from engine.quality_gate import MIN_COSINE

        return self.min_cosine is None or self.min_cosine >= MIN_COSINE


def load_gpu_libraries() -> None:
    """pip's TensorRT and CUDA libraries are not on the loader path: importing `tensorrt` loads libnvinfer into
    the process (ORT's TRT EP then finds it by soname), and ORT ≥ 1.21 preloads pip's CUDA/cuDNN."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a system CUDA install works without it
            print(f"note: onnxruntime.preload_dlls(): {exc}")


def make_variants(bundle: Path) -> str:
    """`python -m export variant BUNDLE --fp16|--ort-cuda|--trt-ready`, each recorded with its gate."""
    results = []
    for flag in VARIANT_FLAGS:
        proc = subprocess.run([sys.executable, "-m", "export", "variant", str(bundle), flag], cwd=ROOT,
                              capture_output=True, text=True)
        results.append(f"{flag[2:]} {'ok' if proc.returncode == 0 else f'failed ({proc.returncode})'}")
        if proc.returncode:
            print(f"  export variant {flag}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return ", ".join(results)


def plan(size: int, steps: int, seed: int):
    from engine.plan import GenerationPlan
    from engine.quality_gate import NEGATIVE, PROMPTS

    return GenerationPlan(prompts=(PROMPTS[seed % len(PROMPTS)],), negative_prompts=(NEGATIVE,), seeds=(seed,),
                          subseeds=(0,), width=size, height=size, steps=steps, cfg_scale=7.0, sampler="Euler",
                          scheduler="automatic")


def gate(bundle, backend, samples: int, size: int, steps: int) -> tuple[float, float]:
    """min cosine over every UNet call (replayed on the GPU backend with the CPU reference's inputs) and the
    worst image PSNR, as engine/quality_gate.py: run_gate measures a variant."""
    from engine.backend import OrtBackend
    from engine.pipeline import Pipeline
    from engine.quality_gate import RecordingBackend, cosine, psnr_db

    reference = RecordingBackend(OrtBackend(bundle, "cpu"))
    ref_pipe, gpu_pipe = Pipeline(bundle, reference), Pipeline(bundle, backend)
    cosines, psnrs = [], []
    for i in range(samples):
        p = plan(size, steps, 1000 + i)
        expected = np.asarray(ref_pipe.txt2img(p).images[0])
        for inputs, output in reference.calls:
            cosines.append(cosine(next(iter(backend.run("unet", inputs).values())), output))
        reference.calls.clear()
        psnrs.append(psnr_db(np.asarray(gpu_pipe.txt2img(p).images[0]), expected))
    return min(cosines), min(psnrs)


def time_image(bundle, backend, size: int, steps: int) -> tuple[float, float]:
    """Median seconds of a `size` px, `steps`-step image (3 runs after a warm-up) and the median UNet call."""
    from engine.pipeline import Pipeline
    from engine.quality_gate import RecordingBackend

    recorder = RecordingBackend(backend, keep=False)
    pipeline = Pipeline(bundle, recorder)
    pipeline.txt2img(plan(size, steps, 1))
    recorder.seconds.clear()
    times = []
    for seed in (2, 3, 4):
        start = time.perf_counter()
        pipeline.txt2img(plan(size, steps, seed))
        times.append(time.perf_counter() - start)
    return statistics.median(times), statistics.median(recorder.seconds) * 1000


def check_model(name: str, path: Path, args, gpu) -> list[Row]:
    from engine.bundle import load_bundle
    from engine.trt_build import build_engines, unet_signature
    from engine.trt_profiles import a1111_profiles
    from engine.trt_runtime import (
        CUDA_VARIANTS,
        TensorrtBackend,
        create_cuda_backend,
        default_engine_root,
        open_ort_trt_engine,
        plan_engines,
        timing_cache_dir,
        variant_graph,
    )

    print(f"== {name}: {path}")
    variants = "skipped" if args.skip_variants else make_variants(path)
    bundle = load_bundle(path)  # after the variants: their records are in the manifest now
    print(f"  variants: {variants}")
    root = Path(args.engine_dir) if args.engine_dir else default_engine_root(bundle)
    profiles = [p for p in a1111_profiles(unet_signature(bundle), bundle.manifest.architecture)
                if p.name in args.profiles.split(",")]
    for r in build_engines(bundle, root, gpu, profiles,
                           on_start=lambda e: print(f"  building engine {e.profile.name} ...", flush=True)):
        print(f"  engine {r.profile}: {'cached' if r.skipped else f'built in {r.seconds:.0f} s'}")
    import onnxruntime as ort

    from engine.trt_profiles import TrtBuildOptions

    cuda_graph_name = variant_graph(bundle, "unet", CUDA_VARIANTS)[0]
    trt = TensorrtBackend(create_cuda_backend(bundle), plan_engines(bundle, root, gpu, ort.__version__, profiles),
                          open_ort_trt_engine(bundle, TrtBuildOptions(), timing_cache_dir(root, gpu)))
    candidates = [
        ("ort-cuda (run)", cuda_graph_name, lambda: create_cuda_backend(bundle, io_binding=False)),
        ("ort-cuda + io binding", cuda_graph_name, lambda: create_cuda_backend(bundle)),
        ("ort-tensorrt engines", variant_graph(bundle, "unet", ("trt-ready",))[0], lambda: trt),
    ]
    rows = []
    for backend_name, graph, make in candidates:
        row = Row(name, backend_name, graph)
        try:
            backend = make()
            row.min_cosine, row.psnr_db = gate(bundle, backend, args.gate_samples, args.gate_size, args.gate_steps)
            counter = getattr(backend, "counter", None)
            if counter is not None:
                counter.reset()
            row.image_s, row.unet_ms = time_image(bundle, backend, args.size, args.steps)
            if counter is not None and counter.runs:
                row.copies = (f"{counter.h2d_bytes / counter.runs / 1024:.0f} KiB in, "
                              f"{counter.d2h_bytes / counter.runs / 1024:.0f} KiB out per call")
            if backend is trt:
                row.note = ", ".join(f"{k}: {v}" for k, v in sorted(trt.calls.items()))
        except Exception as exc:
            traceback.print_exc()
            row.note = f"error: {exc}"[:80]
            row.min_cosine = -1.0
        rows.append(row)
    if not args.skip_cpu:
        from engine.backend import OrtBackend

        row = Row(name, "ort-cpu (reference)", "portable")
        row.image_s, row.unet_ms = time_image(bundle, OrtBackend(bundle, "cpu"), args.size, args.steps)
        rows.append(row)
    return rows


def table(rows: list[Row], size: int, steps: int) -> str:
    head = ("model", "backend", "graph", "min cos", "PSNR dB", f"{size}px {steps} steps s", "UNet ms", "copies",
            "note")

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    body = [(r.model, r.backend, r.graph, fmt(r.min_cosine, ".5f"), fmt(r.psnr_db, ".1f"), fmt(r.image_s, ".2f"),
             fmt(r.unet_ms, ".1f"), r.copies, r.note) for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def default_full_model() -> Path | None:
    env = os.environ.get("SDEDGE_FULL_MODEL")
    if env:
        return Path(env)
    try:
        from benchmarks.full_models import full_models

        models = full_models("sd15")
        return models.bundle if models.complete() else None
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "sdedge-shapes"), help="the demo bundle")
    p.add_argument("--full", default=None, help="a full-size bundle (default: $SDEDGE_FULL_MODEL, or the "
                   "benchmark's cached SD 1.5 if built)")
    p.add_argument("--no-full", action="store_true", help="the demo only")
    p.add_argument("--engine-dir", default=None)
    p.add_argument("--profiles", default="static-512", help="engine profiles to build (default static-512)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--gate-samples", type=int, default=2)
    p.add_argument("--gate-size", type=int, default=512)
    p.add_argument("--gate-steps", type=int, default=4)
    p.add_argument("--skip-variants", action="store_true")
    p.add_argument("--skip-cpu", action="store_true", help="no CPU timing row (minutes for a full-size model)")
    p.add_argument("--no-tests", action="store_true", help="skip the `gpu`-marked tests (run last otherwise)")
    args = p.parse_args(argv)

    from service.cli.build_engines import said_no_gpu

    load_gpu_libraries()
    if said_no_gpu("gpu-check: skipped, ", "It needs an NVIDIA GPU, its driver, TensorRT and onnxruntime-gpu "
                   "(docs/gpu.md); nothing was checked."):
        return NO_GPU
    from engine.trt_cache import probe_gpu

    gpu = probe_gpu()
    print(f"GPU: {gpu.name}, sm {gpu.compute_capability}, TensorRT {gpu.tensorrt_version}")
    models = [("demo", Path(args.model))]
    full = Path(args.full) if args.full else default_full_model()
    if full is not None and not args.no_full:
        models.append(("full-size", full))
    rows = []
    for name, path in models:
        rows += check_model(name, path, args, gpu)
    print()
    print(table(rows, args.size, args.steps))
    tests_ok = True
    if not args.no_tests:
        # Every test that needs a GPU (they skip elsewhere); this file's own gpu test would run gpu-check again.
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "tests",
                               "--ignore=tests/export/test_gpu_check.py"], cwd=ROOT)
        tests_ok = proc.returncode == 0
        print(f"gpu tests: {'passed' if tests_ok else f'FAILED (pytest exit {proc.returncode})'}")
    return 0 if tests_ok and all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

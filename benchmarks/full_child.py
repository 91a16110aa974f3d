"""One pipeline at one size on the full-size model, in its own process; prints one JSON line.

Run by benchmarks/full.py once per (pipeline, size), so each process's peak RSS (VmHWM) is that pipeline's own at
that size. Work: txt2img, batch 1, Euler over A1111's sigmas, CFG 7, the same initial latents for every
pipeline; one 1-step warm-up image (session creation, OpenVINO's compile for the shape), then one timed image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import peak_rss_mib

PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
NEGATIVE = "blurry, low quality"
CFG = 7.0
PIPELINES = ("sdedge-ort-fp32", "sdedge-openvino-fp32", "sdedge-openvino-bf16", "diffusers-fp32", "diffusers-bf16")


class Timer:
    """Per-component call times."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}

    def add(self, component: str, seconds: float) -> None:
        self.seconds.setdefault(component, []).append(seconds)

    def clear(self) -> None:
        self.seconds.clear()


class TimedBackend:
    def __init__(self, inner, timer: Timer):
        self.inner, self.timer = inner, timer

    def run(self, component, inputs):
        start = time.perf_counter()
        out = self.inner.run(component, inputs)
        self.timer.add(component, time.perf_counter() - start)
        return out

    def input_specs(self, component):
        return self.inner.input_specs(component)

    def output_names(self, component):
        return self.inner.output_names(component)

    @property
    def providers(self):
        return self.inner.providers


def sdedge_runner(bundle: Path, name: str, threads: int, timer: Timer):
    from engine.backend import BackendChoice, create_backend
    from engine.bundle import load_bundle
    from engine.pipeline import Pipeline
    from engine.plan import GenerationPlan

    _, backend, precision = name.split("-")
    loaded = load_bundle(bundle)
    pipeline = Pipeline(loaded, TimedBackend(create_backend(loaded, "cpu", BackendChoice(backend, precision, threads)),
                                             timer))

    def run(size: int, steps: int, noise: np.ndarray) -> np.ndarray:
        plan = GenerationPlan(prompts=(PROMPT,), negative_prompts=(NEGATIVE,), seeds=(0,), subseeds=(0,),
                              width=size, height=size, steps=steps, cfg_scale=CFG, sampler="Euler",
                              scheduler="automatic")
        return np.asarray(pipeline.txt2img(plan, initial_noise=noise).images[0])

    return run, lambda steps: [float(s) for s in pipeline.sigmas("Euler", "automatic", steps)]


def diffusers_runner(folder: Path, name: str, threads: int, timer: Timer, sigmas_of):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if name.endswith("bf16") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
        scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler", timestep_spacing="linspace"))
    pipe.set_progress_bar_config(disable=True)
    starts: dict[str, float] = {}
    pipe.unet.register_forward_pre_hook(lambda *_: starts.__setitem__("unet", time.perf_counter()))
    pipe.unet.register_forward_hook(lambda *_: timer.add("unet", time.perf_counter() - starts["unet"]))
    decode = pipe.vae.decode

    def timed_decode(*args, **kwargs):
        start = time.perf_counter()
        out = decode(*args, **kwargs)
        timer.add("vae_decoder", time.perf_counter() - start)
        return out

    pipe.vae.decode = timed_decode

    def run(size: int, steps: int, noise: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, guidance_scale=CFG,
                         sigmas=sigmas_of(steps), latents=torch.from_numpy(noise).to(dtype),
                         output_type="np").images[0]
        return (np.clip(image.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.full_child")
    parser.add_argument("--pipeline", choices=PIPELINES, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--diffusers", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-out", type=Path, help="save the timed image here (.npy) for comparisons")
    args = parser.parse_args(argv)
    noise = np.random.default_rng(args.size).standard_normal((1, 4, args.size // 8, args.size // 8)).astype(np.float32)
    timer = Timer()
    start = time.perf_counter()
    if args.pipeline.startswith("sdedge"):
        run, sigmas_of = sdedge_runner(args.bundle, args.pipeline, args.threads, timer)
    else:
        from engine.backend import OrtBackend
        from engine.bundle import load_bundle
        from engine.pipeline import Pipeline

        # A1111's sigmas from our scheduler code (no session is created), handed to diffusers as in
        # benchmarks/run.py.
        bundle = load_bundle(args.bundle)
        sched = Pipeline(bundle, OrtBackend(bundle))
        run = diffusers_runner(args.diffusers, args.pipeline, args.threads, timer,
                               lambda steps: [float(s) for s in sched.sigmas("Euler", "automatic", steps)])
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    run(args.size, 1, noise)  # warm-up: sessions, compile for this shape, allocator
    warmup_s = time.perf_counter() - start
    timer.clear()
    start = time.perf_counter()
    image = run(args.size, args.steps, noise)
    total_s = time.perf_counter() - start
    if args.image_out:
        np.save(args.image_out, image)
    unet = timer.seconds.get("unet", [])
    print(json.dumps({
        "pipeline": args.pipeline, "size": args.size, "steps": args.steps, "load_s": round(load_s, 2),
        "warmup_s": round(warmup_s, 2), "total_s": round(total_s, 2),
        "unet_call_s": round(statistics.median(unet), 3) if unet else None, "unet_calls": len(unet),
        "vae_decode_s": round(sum(timer.seconds.get("vae_decoder", [])), 3),
        "peak_rss_mib": round(peak_rss_mib() or 0, 1), "torch_imported": "torch" in sys.modules,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

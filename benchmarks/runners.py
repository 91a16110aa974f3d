"""The pipelines under test, each as `runner(job) -> HxWx3 uint8 image` doing the same work: CLIP encode, 20 Euler
steps with CFG over A1111's default sigmas from the same initial latents, VAE decode, PIL image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Job:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    cfg_scale: float
    sigmas: tuple[float, ...]
    noise: np.ndarray  # [1, 4, h, w] standard normal; every pipeline starts at noise·σ₀

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


class SdedgeRunner:
    def __init__(self, bundle: Path, threads: int):
        from engine.backend import OrtBackend
        from engine.bundle import load_bundle
        from engine.pipeline import Pipeline

        loaded = load_bundle(bundle)
        self.pipeline = Pipeline(loaded, OrtBackend(loaded, "cpu", intra_op_threads=threads))

    def __call__(self, job: Job) -> np.ndarray:
        from engine.plan import GenerationPlan

        plan = GenerationPlan(
            prompts=(job.prompt,), negative_prompts=(job.negative_prompt,), seeds=(0,), subseeds=(0,),
            width=job.width, height=job.height, steps=job.steps, cfg_scale=job.cfg_scale, sampler="Euler",
            scheduler="automatic", sigmas=job.sigmas,
        )
        return np.asarray(self.pipeline.txt2img(plan, initial_noise=job.noise).images[0])


def _euler_scheduler(scheduler_folder: Path):
    from diffusers import EulerDiscreteScheduler

    # "linspace" makes init_noise_sigma = σ₀, as k-diffusion starts (the demo's config says "leading").
    return EulerDiscreteScheduler.from_pretrained(scheduler_folder, timestep_spacing="linspace")


class _DiffusersCall:
    pipe = None

    def __call__(self, job: Job) -> np.ndarray:
        import torch

        with torch.inference_mode():
            image = self.pipe(
                prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width, height=job.height,
                guidance_scale=job.cfg_scale, sigmas=list(job.sigmas), latents=torch.from_numpy(job.noise),
                output_type="pil",
            ).images[0]
        return np.asarray(image)


class DiffusersRunner(_DiffusersCall):
    """diffusers' StableDiffusionPipeline on torch, fp32, default attention processor."""

    def __init__(self, folder: Path, threads: int):
        import torch
        from diffusers import StableDiffusionPipeline

        torch.set_num_threads(threads)
        self.pipe = StableDiffusionPipeline.from_pretrained(
            folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False,
            scheduler=_euler_scheduler(folder / "scheduler"),
        )
        self.pipe.set_progress_bar_config(disable=True)


class OptimumRunner(_DiffusersCall):
    """optimum's ORTStableDiffusionPipeline: diffusers' loop and torch scheduler around ORT sessions."""

    def __init__(self, folder: Path, threads: int):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.pipe = ORTStableDiffusionPipeline.from_pretrained(
            folder, session_options=options, scheduler=_euler_scheduler(folder / "scheduler")
        )
        self.pipe.set_progress_bar_config(disable=True)

"""txt2img: plan → conditioning → initial noise → sampler loop → VAE decode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.backend import ExecutionBackend, OrtBackend
from engine.bundle import Bundle, load_bundle
from engine.conditioning import PromptEncoder, constant_conditioning
from engine.denoiser import CFGDenoiser, Interrupted, UNet
from engine.images import decode_latents, to_pil
from engine.plan import GenerationPlan
from engine.rng import ImageRNG
from engine.samplers import SAMPLERS
from engine.schedules import ModelSchedule, get_sigmas, scaled_linear_alphas_cumprod
from engine.tokenizer import ClipTokenizer


@dataclass(frozen=True)
class StepEvent:
    """Progress of a running job, passed to the pipeline's `on_step` hook after each denoiser step."""

    job_no: int
    job_count: int
    step: int
    steps: int
    latents: np.ndarray


@dataclass
class GenerationResult:
    images: list[Image.Image]
    latents: list[np.ndarray] = field(default_factory=list)
    interrupted: bool = False


class Pipeline:
    """A loaded bundle on an execution backend."""

    def __init__(self, bundle: Bundle, backend: ExecutionBackend):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        ns = self.manifest.noise_schedule
        self.schedule = ModelSchedule(
            scaled_linear_alphas_cumprod(ns.beta_start, ns.beta_end, ns.num_train_timesteps)
        )
        self.tokenizer = ClipTokenizer(
            bundle.tokenizer_dir, self.manifest.bos_token_id, self.manifest.eos_token_id
        )
        self.prompt_encoder = PromptEncoder(backend, self.tokenizer, self.manifest)
        self.unet = UNet(backend)

    @classmethod
    def from_path(cls, path: str | Path, providers: str | list[str] = "cpu") -> Pipeline:
        bundle = load_bundle(path)
        return cls(bundle, OrtBackend(bundle, providers))

    def sigmas(self, sampler: str, scheduler: str, steps: int) -> np.ndarray:
        return get_sigmas(self.schedule, steps, scheduler, SAMPLERS[sampler].default_scheduler)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        f = self.manifest.vae_scale_factor
        return (self.manifest.latent_channels, height // f, width // f)

    def txt2img(
        self,
        plan: GenerationPlan,
        on_step: Callable[[StepEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        initial_noise: np.ndarray | None = None,
    ) -> GenerationResult:
        """Run every batch iteration of the plan. `initial_noise` (one row per image) replaces the seeded noise."""
        result = GenerationResult(images=[])
        sampler = SAMPLERS[plan.sampler]
        sigmas = np.asarray(plan.sigmas, dtype=np.float32)
        shape = self.latent_shape(plan.width, plan.height)
        for n in range(plan.n_iter):
            images = plan.batch(n)
            rng = ImageRNG(shape, plan.seeds[images], plan.randn_source, plan.eta_noise_seed_delta)
            noise = rng.first() if initial_noise is None else initial_noise[images]
            conditioning = constant_conditioning(
                self.prompt_encoder, plan.prompts[images], plan.negative_prompts[images], plan.clip_skip
            )
            denoiser = CFGDenoiser(
                self.unet, self.schedule, conditioning, plan.cfg_scale, self.manifest.prediction_type, should_stop
            )
            last = {"x": noise * sigmas[0]}

            def callback(state: dict, n: int = n, last: dict = last) -> None:
                last["x"] = state["denoised"]
                if on_step is not None:
                    on_step(StepEvent(n, plan.n_iter, state["i"] + 1, len(sigmas) - 1, state["denoised"]))

            try:
                latents = sampler.function(
                    denoiser,
                    noise * sigmas[0],
                    sigmas,
                    callback=callback,
                    noise_sampler=lambda _s, _sn, rng=rng: rng.next(),
                    **sampler_options(plan, sampler.function),
                )
            except Interrupted:
                latents = last["x"]
                result.interrupted = True
            result.latents.extend(latents)
            result.images.extend(to_pil(decode_latents(self.backend, self.manifest, latents)))
            if result.interrupted:
                break
        return result


def sampler_options(plan: GenerationPlan, function: Callable) -> dict:
    """The plan's sampler options that this sampler function accepts."""
    names = function.__code__.co_varnames[: function.__code__.co_argcount]
    candidates = {
        "eta": plan.eta if plan.eta is not None else 1.0,
        "s_churn": plan.s_churn,
        "s_tmin": plan.s_tmin,
        "s_tmax": plan.s_tmax,
        "s_noise": plan.s_noise,
    }
    return {k: v for k, v in candidates.items() if k in names}

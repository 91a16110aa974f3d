"""txt2img (with hires fix) and img2img: plan → conditioning → initial noise → sampler loop → VAE decode."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from engine import image_ops
from engine.backend import BackendChoice, ExecutionBackend, create_backend
from engine.brownian import NoiseSampler, brownian_noise_sampler
from engine.bundle import Bundle, load_bundle
from engine.color_correction import apply_color_correction, correction_target
from engine.conditioning import PromptEncoder, embeddings_used, scheduled_conditioning
from engine.denoiser import CFGDenoiser, Interrupted, LatentMask, UNet
from engine.embedding_table import EmbeddingTable
from engine.images import decode_latents, encode_images, to_pil, vae_posterior
from engine.img2img import (
    ResolvedSchedule,
    crop_latents,
    denoised_image,
    encoder_noise,
    img2img_steps,
    inpainting_conditioning,
    is_edit_model,
    latent_nmask,
    prepare_init,
    resolve_schedule,
)
from engine.plan import GenerationPlan, ScheduleSpec
from engine.refiner import RefinerSwitch
from engine.rng import ImageRNG
from engine.samplers import SAMPLERS, TIMESTEPS, SamplerSettings, SamplerSpec
from engine.schedules import (
    ZERO_TERMINAL_SNR,
    ModelSchedule,
    get_sigmas,
    lcm_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_alphas_cumprod,
)
from engine.sdxl_conditioning import SdxlPromptEncoder, sdxl_pass_options
from engine.textual_inversion import Embedding
from engine.tiling import CircularBackend
from engine.timestep_samplers import grid_sigmas, timestep_pass
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
    is_using_inpainting_conditioning: bool = False
    masked: bool = False  # img2img inpainted (a usable mask)
    paste_to: tuple[int, int, int, int] | None = None  # "only masked": the crop box (x, y, w, h) pasted back
    # Inpainting: A1111's `mask_for_overlay` and, per image, the result before the overlay (`denoised_image`),
    # from which options return_mask / return_mask_composite make their images.
    mask_for_overlay: Image.Image | None = None
    denoised: list[Image.Image] = field(default_factory=list)
    ngms_applied: bool = False  # a step skipped the uncond for s_min_uncond (A1111's `NGMS` infotext entry)
    refined: bool = False  # the refiner took over (A1111 then writes `Refiner` and `Refiner switch at`)


@dataclass(frozen=True)
class SamplingPass:
    """One run of a sampler over a batch: what differs between txt2img, img2img and the hires pass."""

    sampler: str
    sigmas: np.ndarray
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    job_no: int
    job_count: int
    image_cond: np.ndarray | None = None
    latent_mask: LatentMask | None = None
    img2img: bool = False  # starts from an init latent at sigmas[0] (img2img, hires) rather than pure noise
    hires_steps: int | None = None  # hires pass: its total steps (prompt schedules count on from pass 1)
    brownian_span: tuple[float, float] | None = None  # σ range of the Brownian trees when not that of `sigmas`
    refiner: RefinerSwitch | None = None  # refiner_checkpoint: may take over this pass (engine/refiner.py)


class Pipeline:
    """A loaded bundle on an execution backend."""

    def __init__(self, bundle: Bundle, backend: ExecutionBackend, embedding_table: EmbeddingTable | None = None):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        ns = self.manifest.noise_schedule
        alphas_cumprod = scaled_linear_alphas_cumprod(ns.beta_start, ns.beta_end, ns.num_train_timesteps)
        self.schedule = ModelSchedule(alphas_cumprod)
        # Option sd_noise_schedule picks one per job; both are built once so their σ tables are computed once.
        self.schedules = {ZERO_TERMINAL_SNR: ModelSchedule(rescale_zero_terminal_snr(alphas_cumprod))}
        self.tokenizer = ClipTokenizer(
            bundle.tokenizer_dir, self.manifest.bos_token_id, self.manifest.eos_token_id
        )
        # Textual inversion: one table per model, shared with this model's other pipelines (engine/embedding_table.py).
        self.embedding_table = embedding_table if embedding_table is not None else \
            EmbeddingTable.for_bundle(bundle, self.manifest, self.tokenizer)
        encoder = SdxlPromptEncoder if self.manifest.is_sdxl else PromptEncoder
        self.prompt_encoder = encoder(backend, self.tokenizer, self.manifest, embeddings=self.embedding_table)
        self.unet = UNet(backend)
        # Embeddings bundled in this pass's LoRA files (`with_bundled_embeddings`); none on a model's own pipeline.
        self.bundled_embeddings: dict[str, Embedding] = {}

    def with_backend(self, backend: ExecutionBackend) -> Pipeline:
        """This model on another backend (LoRA-merged sessions): schedules and tokenizer shared, the prompt
        encoder's cache not (a text-encoder LoRA changes every embedding)."""
        other = copy.copy(self)
        other.backend = backend
        other.prompt_encoder = type(self.prompt_encoder)(backend, self.tokenizer, self.manifest,
                                                         embeddings=self.embedding_table)
        other.unet = UNet(backend)
        other._tiled = None  # its tiled view runs on these sessions too (engine/tiling.py)
        return other

    def tiled(self) -> Pipeline:
        """This model with circular padding in the UNet and the VAE (A1111 modules/sd_hijack.py:
        apply_circular), for plans with `tiling`: the same bundle on a backend view whose UNet/VAE sessions are
        created on the first tiled job and then kept beside the plain ones (engine/tiling.py)."""
        if getattr(self, "_tiled", None) is None:
            self._tiled = self if getattr(self.backend, "circular", False) else Pipeline(
                self.bundle, CircularBackend(self.backend), self.embedding_table)
            self._tiled.bundled_embeddings = self.bundled_embeddings
        return self._tiled

    def with_bundled_embeddings(self, embeddings: Mapping[str, Embedding]) -> Pipeline:
        """This pipeline with the embeddings bundled in its LoRA files beside the model's (A1111 registers them
        while the network is loaded: extensions-builtin/Lora/networks.py: load_networks). The view has its own
        table, so the model's other pipelines never see them; `set_embeddings` gives it the files, and a bundled
        embedding whose name a file the model takes already has is left out (A1111: "Skip bundle embedding")."""
        other = copy.copy(self)
        other.bundled_embeddings = dict(embeddings)
        other.embedding_table = self.embedding_table.sibling()
        other.prompt_encoder = type(self.prompt_encoder)(self.backend, self.tokenizer, self.manifest,
                                                         embeddings=other.embedding_table)
        other._tiled = None
        other.embedding_table.set(other.bundled_embeddings)
        return other

    def set_embeddings(self, embeddings: Mapping[str, Embedding]) -> None:
        """Replace the model's textual-inversion table (name → embedding; on name ties the first wins). Shared by
        `with_backend` and `tiled` pipelines, whose cached prompt encodings are not reused after the change.
        Embeddings this model does not accept (`accepts_embedding`) are ignored. A pipeline with bundled
        embeddings (`with_bundled_embeddings`) keeps those whose names `embeddings` lacks, after the files."""
        bundled = {n: e for n, e in self.bundled_embeddings.items() if n not in embeddings}
        self.embedding_table.set({**embeddings, **bundled} if bundled else embeddings)
        self.prompt_encoder.clear_cache()

    def accepts_embedding(self, embedding: Embedding) -> bool:
        """Whether this model inserts `embedding`: its vectors' widths are the text encoders' (SDXL: clip_l and
        clip_g) and the bundle's text encoders take `inputs_embeds` (re-export older bundles)."""
        return self.embedding_table.accepts(embedding)

    def embeddings_used(self, prompts: Sequence[str], **schedule) -> tuple[Embedding, ...]:
        """The embeddings `prompts` insert, in first-use order (A1111's `TI hashes`); keywords as
        engine/conditioning.py `embeddings_used` (negative_prompts, steps, hires_steps, options)."""
        return embeddings_used(self.prompt_encoder, prompts, **schedule)

    @classmethod
    def from_path(cls, path: str | Path, providers: str | list[str] = "cpu",
                  choice: BackendChoice = BackendChoice()) -> Pipeline:
        bundle = load_bundle(path)
        return cls(bundle, create_backend(bundle, providers, choice))

    def model_schedule(self, settings: SamplerSettings | None = None) -> ModelSchedule:
        """The model's ᾱ schedule, rescaled to zero terminal SNR when option sd_noise_schedule asks (A1111
        modules/sd_models.py: rescale_zero_terminal_snr_abar);
        any other value is the default, as in A1111."""
        return self.schedules.get(settings.noise_schedule, self.schedule) if settings else self.schedule

    def schedule_for(self, sampler: str, settings: SamplerSettings | None = None) -> ModelSchedule:
        """LCM runs on its own 50-timestep schedule (A1111 modules/sd_samplers_lcm.py: LCMCompVisDenoiser);
        every other sampler on the model's."""
        schedule = self.model_schedule(settings)
        return lcm_schedule(schedule) if sampler == "LCM" else schedule

    def sigmas(
        self, sampler: str, scheduler: str, steps: int, settings: SamplerSettings | None = None
    ) -> np.ndarray:
        """The σ schedule `sampler` walks (steps + 1 values for most schedulers, A1111
        modules/sd_schedulers.py).

        Timestep samplers ignore the scheduler: their schedule is DDIM's grid as σ values (`grid_sigmas`), which
        img2img truncates like any other and the pipeline reads back as timesteps.
        """
        spec = SAMPLERS[sampler]
        settings = settings or SamplerSettings()
        discard = spec.discard_next_to_last_sigma or settings.always_discard_next_to_last_sigma
        if spec.kind == TIMESTEPS:
            return grid_sigmas(self.model_schedule(settings), steps, steps + 1 if discard else steps)
        options = replace(settings.schedule, sdxl=self.manifest.is_sdxl)
        return get_sigmas(
            self.schedule_for(sampler, settings), steps, scheduler, spec.default_scheduler,
            discard_next_to_last_sigma=discard, options=options,
        )

    def resolve_schedule(self, spec: ScheduleSpec) -> ResolvedSchedule:
        """A plan's schedule on this model, computed when the pass runs (a plan does not depend on the model)."""
        return resolve_schedule(spec, self.sigmas)

    def _start(
        self, plan: GenerationPlan, run: SamplingPass, noise: np.ndarray, init: np.ndarray | None = None
    ) -> np.ndarray:
        """The sampler's first x (A1111 modules/sd_samplers_kdiffusion.py: KDiffusionSampler.sample,
        sample_img2img): k-diffusion samplers take σ₀·noise in txt2img (√(1 + σ₀²)·noise
        with sgm_noise_multiplier) and init + σ₀·noise in img2img; timestep samplers take the noise unscaled in
        txt2img and √ᾱ·init + √(1 − ᾱ)·noise at the noised timestep in img2img. img2img and the hires pass add
        img2img_extra_noise·noise (·√ᾱ for timestep samplers)."""
        settings = plan.sampler_settings
        extra = max(settings.img2img_extra_noise, 0.0)  # A1111 ignores values ≤ 0
        if SAMPLERS[run.sampler].kind != TIMESTEPS:
            sigma = run.sigmas[0]
            if init is None:
                scale = np.sqrt(1.0 + sigma**2) if settings.sgm_noise_multiplier else sigma
                return (noise * scale).astype(np.float32)
            x = init + noise * sigma
            if extra:
                x = x + noise * extra
            return x.astype(np.float32)
        if init is None:
            return noise.astype(np.float32)
        schedule = self.model_schedule(settings)
        t = timestep_pass(schedule, run.sigmas, img2img=True).noise_timestep
        if t is None:
            return init.astype(np.float32)
        a = schedule.alphas_cumprod[t]
        x = init * np.sqrt(a) + noise * np.sqrt(1 - a)
        if extra:
            x = x + noise * extra * np.sqrt(a)
        return x.astype(np.float32)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        f = self.manifest.vae_scale_factor
        return (self.manifest.latent_channels, height // f, width // f)

    def _image_rng(self, plan: GenerationPlan, shape: tuple[int, ...], images: slice) -> ImageRNG:
        return ImageRNG(
            shape, plan.seeds[images], plan.randn_source, plan.eta_noise_seed_delta,
            subseeds=plan.subseeds[images], subseed_strength=plan.subseed_strength,
            seed_resize_from_h=plan.seed_resize_from_h, seed_resize_from_w=plan.seed_resize_from_w,
            gpu_threads=plan.gpu_rng_threads,
        )

    def _encode(self, images: np.ndarray, noise=None) -> np.ndarray:
        return encode_images(self.backend, self.manifest, images, noise)

    def _decode(self, latents: np.ndarray) -> list[Image.Image]:
        return to_pil(decode_latents(self.backend, self.manifest, latents))

    def _sample(
        self,
        plan: GenerationPlan,
        run: SamplingPass,
        x: np.ndarray,
        rng: ImageRNG,
        on_step: Callable[[StepEvent], None] | None,
        should_stop: Callable[[], bool] | None,
        result: GenerationResult | None = None,
    ) -> tuple[np.ndarray, bool]:
        """Sample from `x` (already noised to sigmas[0]); on interrupt, the last denoised prediction. Notes
        on `result` what the infotext reports of the sampling (NGMS)."""
        sampler = SAMPLERS[run.sampler]
        settings = plan.sampler_settings
        schedule = self.schedule_for(run.sampler, settings)
        # Prompt schedules span the first pass's total steps, also for img2img's shortened walk (A1111
        # modules/prompt_parser.py: get_learned_conditioning_prompt_schedules; modules/sd_samplers_common.py:
        # setup_img2img_steps).
        conditioning = scheduled_conditioning(
            self.prompt_encoder, run.prompts, run.negative_prompts, plan.total_steps, run.hires_steps,
            plan.use_old_scheduling, sdxl_pass_options(plan.text_encoder_options, self.manifest, x.shape),
        )
        image_cfg_scale = plan.img2img.image_cfg_scale if plan.img2img else None
        refiner_conditioning = None
        if run.refiner is not None:
            refiner = run.refiner.pipeline

            def refiner_conditioning():
                # A1111 recomputes the conds with the refiner loaded (apply_refiner → p.setup_conds()).
                return scheduled_conditioning(
                    refiner.prompt_encoder, run.prompts, run.negative_prompts, plan.total_steps, run.hires_steps,
                    plan.use_old_scheduling, sdxl_pass_options(plan.text_encoder_options, refiner.manifest, x.shape),
                )
        denoiser = CFGDenoiser(
            self.unet, schedule, conditioning, plan.cfg_scale, self.manifest.prediction_type, should_stop,
            image_cond=run.image_cond, latent_mask=run.latent_mask, image_cfg_scale=image_cfg_scale,
            s_min_uncond=settings.s_min_uncond, s_min_uncond_all=settings.s_min_uncond_all,
            skip_early_cond=settings.skip_early_cond, total_steps=sampler.total_steps(launch_steps(plan, run)),
            pad_cond_uncond=settings.pad_cond_uncond,
            empty_context=self.prompt_encoder.encode_texts([""], plan.text_encoder_options)[0]
            if settings.pad_cond_uncond == "empty" else None,
            refiner=run.refiner, refiner_conditioning=refiner_conditioning,
        )
        last = {"x": x}
        # k-diffusion samplers walk sigmas; timestep samplers walk DDIM's grid (read back from the sigmas).
        walk = run.sigmas
        if sampler.kind == TIMESTEPS:
            walk = timestep_pass(self.model_schedule(settings), run.sigmas, run.img2img).timesteps
        steps = len(walk) if run.sampler == "UniPC" else len(walk) - 1  # UniPC updates at every grid point

        def callback(state: dict) -> None:
            last["x"] = state["denoised"]
            if on_step is not None:
                on_step(StepEvent(run.job_no, run.job_count, state["i"] + 1, steps, state["denoised"]))

        try:
            latents = sampler.function(
                denoiser,
                x,
                walk,
                callback=callback,
                noise_sampler=noise_sampler_for(run.sampler, x.shape, run.brownian_span or run.sigmas, rng),
                **sampler_options(plan, sampler, run.img2img, schedule),
            )
            return latents, False
        except Interrupted:
            return last["x"], True
        finally:
            if result is not None and denoiser.ngms_applied:
                result.ngms_applied = True

    def _txt2img_image_cond(self, batch: int, shape: tuple[int, ...], noise) -> np.ndarray | None:
        """Inpainting models in txt2img see a fully masked mid-grey image (A1111 modules/processing.py:
        StableDiffusionProcessing.img2img_image_conditioning)."""
        if not self.manifest.is_inpainting:
            return None
        f = self.manifest.vae_scale_factor
        grey = np.full((batch, 3, shape[1] * f, shape[2] * f), 0.5, dtype=np.float32)
        return inpainting_conditioning(lambda im: self._encode(im, noise), grey, None, shape[1:])

    def txt2img(
        self,
        plan: GenerationPlan,
        on_step: Callable[[StepEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        initial_noise: np.ndarray | None = None,
        hires_pipeline: Pipeline | None = None,
        refiner_pipeline: Pipeline | None = None,
    ) -> GenerationResult:
        """Run every batch iteration of the plan (and its hires pass). `initial_noise` (one row per image)
        replaces the seeded noise. `hires_pipeline` runs the hires pass (hr_checkpoint_name): as in A1111, the
        first pass is decoded by this model's VAE, then encoding, sampling and the final decode are its own.
        `refiner_pipeline` is plan.refiner's checkpoint; the images are decoded by the model sampling last."""
        if plan.hires is not None and plan.hires.checkpoint is not None and hires_pipeline is None:
            raise ValueError(f"the hires pass runs on {plan.hires.checkpoint}: pass its pipeline as hires_pipeline")
        if plan.tiling and self.tiled() is not self:
            return self.tiled().txt2img(plan, on_step, should_stop, initial_noise,
                                        hires_pipeline.tiled() if hires_pipeline is not None else None)
        second = hires_pipeline or self
        result = GenerationResult(images=[], is_using_inpainting_conditioning=self.manifest.is_inpainting)
        sigmas = self.resolve_schedule(plan.schedule).sigmas
        shape = self.latent_shape(plan.width, plan.height)
        passes = 2 if plan.hires else 1
        for n in range(plan.n_iter):
            images = plan.batch(n)
            rng = self._image_rng(plan, shape, images)
            noise = rng.first() if initial_noise is None else initial_noise[images]
            posterior_noise = encoder_noise(plan.seeds[images], plan.randn_source)
            refiner = refiner_switch(plan, refiner_pipeline, second_pass=False)
            run = SamplingPass(
                plan.sampler, sigmas, plan.prompts[images], plan.negative_prompts[images], n * passes,
                plan.n_iter * passes, image_cond=self._txt2img_image_cond(len(noise), shape, posterior_noise),
                refiner=refiner,
            )
            latents, interrupted = self._sample(plan, run, self._start(plan, run, noise), rng, on_step, should_stop,
                                                result)
            decoder = refiner.pipeline if refiner is not None and refiner.switched else self
            result.refined |= decoder is not self
            if plan.hires and not interrupted:
                # A refiner that took over the first pass stays loaded for the hires pass (A1111).
                hires_model = decoder if decoder is not self and hires_pipeline is None else second
                hires_refiner = None if decoder is not self else refiner_switch(plan, refiner_pipeline, True)
                latents, interrupted = hires_model._hires_pass(
                    plan, images, latents, posterior_noise, n * passes + 1, on_step, should_stop, first_pass=decoder,
                    refiner=hires_refiner, result=result,
                )
                decoder = hires_refiner.pipeline if hires_refiner is not None and hires_refiner.switched \
                    else hires_model
                result.refined |= hires_refiner is not None and hires_refiner.switched
            result.latents.extend(latents)
            result.images.extend(restore_faces(plan, decoder._decode(latents)))
            if interrupted:
                result.interrupted = True
                if ends_all_batches(should_stop):
                    break
        return result

    def _hires_pass(self, plan: GenerationPlan, images: slice, latents: np.ndarray, posterior_noise,
                    job_no: int, on_step, should_stop, first_pass: Pipeline | None = None,
                    result: GenerationResult | None = None,
                    refiner: RefinerSwitch | None = None) -> tuple[np.ndarray, bool]:
        """A1111 modules/processing.py: StableDiffusionProcessingTxt2Img.sample_hr_pass: upscale the first
        pass (in latent space, or decode → upscaler → encode), crop, then img2img.
        Runs on the hires model; `first_pass` (default: the same) is the model whose VAE decodes the first pass
        for an image upscaler, which A1111 does before it switches checkpoints."""
        hr = plan.hires
        f = self.manifest.vae_scale_factor
        if hr.upscaler in image_ops.LATENT_UPSCALE_MODES:
            mode, antialias = image_ops.LATENT_UPSCALE_MODES[hr.upscaler]
            x0 = image_ops.resize_latents(latents, hr.height // f, hr.width // f, mode, antialias)
            if self.manifest.is_inpainting and plan.inpainting_mask_weight < 1.0:
                # Only then A1111 decodes the upscaled latent (unclamped) for img2img's full-mask conditioning.
                decoded = decode_latents(self.backend, self.manifest, x0, clamp=False)
                image_cond = inpainting_conditioning(lambda im: self._encode(im, posterior_noise), decoded, None,
                                                     x0.shape[2:], mask_weight=plan.inpainting_mask_weight)
            else:
                image_cond = self._txt2img_image_cond(len(x0), x0.shape[1:], posterior_noise)
        else:
            upscaler = hr.image_upscaler or hr.upscaler
            upscaled = [image_ops.resize_image(image_ops.JUST_RESIZE, im, hr.width, hr.height, upscaler)
                        for im in (first_pass or self)._decode(latents)]
            pixels = image_ops.to_array(upscaled)
            x0 = self._encode(pixels, posterior_noise)
            image_cond = None
            if self.manifest.is_inpainting:
                # A1111 hands the [0, 1] batch where img2img hands [−1, 1] (A1111 modules/processing.py:
                # StableDiffusionProcessingTxt2Img.sample_hr_pass): masked image = 2p − 1.
                image_cond = inpainting_conditioning(
                    lambda im: self._encode(im, posterior_noise), (pixels + 1.0) / 2.0, None, x0.shape[2:],
                    mask_weight=plan.inpainting_mask_weight,
                )
        x0 = crop_latents(x0, hr.truncate_x, hr.truncate_y)
        if image_cond is not None:
            image_cond = crop_latents(image_cond, hr.truncate_x, hr.truncate_y)
        rng = self._image_rng(plan, x0.shape[1:], images)
        noise = rng.next()
        schedule = self.resolve_schedule(plan.hires_schedule)  # this (the hires) model's schedule
        run = SamplingPass(hr.sampler, schedule.sigmas, hr.prompts[images], hr.negative_prompts[images], job_no,
                           plan.n_iter * 2, image_cond=image_cond, img2img=True,
                           hires_steps=SAMPLERS[hr.sampler].total_steps(hr.steps),
                           brownian_span=schedule.brownian_span, refiner=refiner)
        return self._sample(plan, run, self._start(plan, run, noise, x0), rng, on_step, should_stop, result)

    def img2img(
        self,
        plan: GenerationPlan,
        on_step: Callable[[StepEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        initial_noise: np.ndarray | None = None,
        refiner_pipeline: Pipeline | None = None,
    ) -> GenerationResult:
        """img2img and inpainting (A1111 modules/processing.py: StableDiffusionProcessingImg2Img): init images
        → latents (posterior mean: A1111's draw there is not
        reproducible), then per batch: noise → sample from the strength's sigma → blend → decode → overlay."""
        if plan.tiling and self.tiled() is not self:
            return self.tiled().img2img(plan, on_step, should_stop, initial_noise)
        spec = plan.img2img
        mask_spec = spec.mask
        shape = self.latent_shape(plan.width, plan.height)
        init = prepare_init(spec, plan.width, plan.height)
        # Each distinct init image is encoded once: with the posterior mean, repeats would encode identically.
        init_latent = np.concatenate([self._encode(image[None]) for image in init.images])
        if spec.resize_mode == image_ops.LATENT_UPSCALE:
            init_latent = image_ops.resize_latents(init_latent, shape[1], shape[2], "bilinear")
        image_cond = None
        if self.manifest.is_inpainting:
            image_cond = np.concatenate([
                inpainting_conditioning(self._encode, image[None], init.mask, shape[1:],
                                        mask_spec.round if mask_spec else True, plan.inpainting_mask_weight)
                for image in init.images
            ])
        elif is_edit_model(self.manifest.unet_in_channels):
            # instruct-pix2pix conditions on the unscaled posterior mode.
            image_cond = np.concatenate([vae_posterior(self.backend, image[None])[0] for image in init.images])
        if len(init_latent) == 1:
            init_latent = np.repeat(init_latent, plan.batch_size, axis=0)
            image_cond = None if image_cond is None else np.repeat(image_cond, plan.batch_size, axis=0)
        latent_mask = None
        if init.mask is not None:
            nmask = latent_nmask(init.mask, shape[1], shape[2], mask_spec.round)
            if mask_spec.masked_content == "latent noise":
                noise = ImageRNG(shape, plan.seeds[: len(init_latent)], plan.randn_source,
                                 gpu_threads=plan.gpu_rng_threads).first()
                init_latent = init_latent * (1 - nmask) + noise * nmask
            elif mask_spec.masked_content == "latent nothing":
                init_latent = init_latent * (1 - nmask)
            init_latent = init_latent.astype(np.float32)
            latent_mask = LatentMask(init_latent, nmask)
        result = GenerationResult(images=[], is_using_inpainting_conditioning=self.manifest.is_inpainting,
                                  masked=init.mask is not None, paste_to=init.paste_to,
                                  mask_for_overlay=init.mask_for_overlay)
        # Colour-correction targets: the processed init images (after resize, crop and fill), as uint8 again.
        targets = [correction_target(np.rint(np.moveaxis(image, 0, -1) * 255).astype(np.uint8))
                   for image in init.images] if spec.color_correction else []
        schedule = self.resolve_schedule(plan.schedule)
        for n in range(plan.n_iter):
            images = plan.batch(n)
            rng = self._image_rng(plan, shape, images)
            noise = rng.first() if initial_noise is None else initial_noise[images]
            noise = noise * spec.initial_noise_multiplier
            refiner = refiner_switch(plan, refiner_pipeline, second_pass=False)
            run = SamplingPass(plan.sampler, schedule.sigmas, plan.prompts[images], plan.negative_prompts[images],
                               n, plan.n_iter, image_cond=image_cond, latent_mask=latent_mask, img2img=True,
                               brownian_span=schedule.brownian_span, refiner=refiner)
            x = self._start(plan, run, noise, init_latent)
            latents, interrupted = self._sample(plan, run, x, rng, on_step, should_stop, result)
            if latent_mask is not None:
                latents = latent_mask.blend(latents)
            result.latents.extend(latents)
            decoder = refiner.pipeline if refiner is not None and refiner.switched else self
            result.refined |= decoder is not self
            for i, image in enumerate(restore_faces(plan, decoder._decode(latents))):
                if targets:  # A1111 corrects before the overlay, so `denoised` is the corrected result too
                    image = apply_color_correction(targets[min(i, len(targets) - 1)], image)
                overlay = init.overlays[min(i, len(init.overlays) - 1)] if init.overlays else None
                if init.mask_for_overlay is not None:
                    result.denoised.append(denoised_image(image, overlay, init.paste_to))
                result.images.append(image_ops.apply_overlay(image, overlay, init.paste_to))
            if interrupted:
                result.interrupted = True
                if ends_all_batches(should_stop):
                    break
        return result


def refiner_switch(plan: GenerationPlan, refiner_pipeline: Pipeline | None, second_pass: bool) -> RefinerSwitch | None:
    """The refiner of one pass; with hires fix, option hires_fix_refiner_pass picks the pass(es) (A1111
    modules/sd_samplers_common.py: apply_refiner)."""
    r = plan.refiner
    if r is None:
        return None
    if refiner_pipeline is None:
        raise ValueError(f"the plan refines with {r.checkpoint}: pass its pipeline as refiner_pipeline")
    if plan.hires is not None and (r.hires_pass, second_pass) in {("first pass", True), ("second pass", False)}:
        return None
    return RefinerSwitch(r.switch_at, refiner_pipeline, r.by_sample_steps)


def restore_faces(plan: GenerationPlan, images: list[Image.Image]) -> list[Image.Image]:
    """Each decoded image with its faces restored when the plan asks, before colour correction and the overlay
    (A1111 modules/processing.py: process_images_inner)."""
    return [plan.face_restorer(image) for image in images] if plan.face_restorer is not None else images


def ends_all_batches(should_stop: Callable[[], bool] | None) -> bool:
    """Asked once more after `should_stop` ended a batch early: still true (an interrupt) drops the remaining
    batches; false (a skip, used up by ending its batch) goes on with the next one (A1111
    modules/shared_state.py: State)."""
    return should_stop is None or should_stop()


def launch_steps(plan: GenerationPlan, run: SamplingPass) -> int:
    """The step count A1111's sampler gives its CFG denoiser (`launch_sampling`, before second-order doubling):
    the request's steps in txt2img, t_enc + 1 in img2img and in the hires pass (A1111
    modules/sd_samplers_common.py: setup_img2img_steps)."""
    if run.hires_steps is not None:
        return plan.hires.steps  # always fixed steps: t_enc + 1 = steps
    if run.img2img:
        spec = plan.img2img
        return img2img_steps(plan.steps, spec.denoising_strength, spec.fix_steps)[1] + 1
    return plan.steps


def noise_sampler_for(sampler: str, x_shape: tuple[int, ...], sigmas: Sequence[float], rng: ImageRNG) -> NoiseSampler:
    """The SDE samplers draw from per-image Brownian trees over the σ range of `sigmas` (A1111
    k_diffusion/sampling.py: BrownianTreeNoiseSampler, modules/sd_samplers_common.py: torchsde_randn); every
    other
    sampler takes the next draw of the images' generators."""
    if SAMPLERS[sampler].options.get("brownian_noise"):
        return brownian_noise_sampler(x_shape, sigmas, rng.seeds, rng.source, rng.gpu_threads)
    return lambda _sigma, _sigma_next: rng.next()


def sampler_options(plan: GenerationPlan, sampler: SamplerSpec, img2img: bool, schedule: ModelSchedule) -> dict:
    """The keyword options A1111 hands this sampler (A1111 modules/sd_samplers_kdiffusion.py:
    samplers_k_diffusion)."""
    settings = plan.sampler_settings
    params = inspect.signature(sampler.function).parameters
    options: dict = {}
    if "eta" in params:
        default = settings.eta_ddim if sampler.kind == TIMESTEPS else settings.eta_ancestral
        options["eta"] = plan.eta if plan.eta is not None else default
    churn = {"s_churn": plan.s_churn, "s_tmin": plan.s_tmin, "s_tmax": plan.s_tmax, "s_noise": plan.s_noise}
    options |= {name: churn[name] for name in sampler.extra_params}
    if "sigma_min" in params and not img2img:
        # txt2img: DPM fast/adaptive span the model's whole σ range, DPM fast in `steps` model calls.
        options |= {"sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max}
        if "n" in params:
            options["n"] = plan.steps
    if "variant" in params:
        options |= {
            "variant": settings.uni_pc_variant, "skip_type": settings.uni_pc_skip_type,
            "order": settings.uni_pc_order, "lower_order_final": settings.uni_pc_lower_order_final,
            "is_img2img": img2img,
        }
    return options

"""A generation request as the engine sees it: a small immutable plan, built before any tensor work."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from engine.conditioning import SdxlOptions, TextEncoderOptions
from engine.prompt_parser import ExtraNetworkTag
from engine.samplers import SAMPLERS, SamplerSettings

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # inpainting_fill 0–3


@dataclass(frozen=True)
class ScheduleSpec:
    """What decides the σ schedule of one sampling pass, independent of the model: the pipeline resolves it with
    its own ᾱ when it runs (as diffusers' `set_timesteps` does), so a plan made before its model is loaded holds.

    `denoising_strength` None walks the whole schedule (txt2img); a strength walks its tail as A1111's
    `setup_img2img_steps` counts it, with `fix_steps` (option img2img_fix_steps, always for the hires pass).
    """

    sampler: str
    scheduler: str
    steps: int
    settings: SamplerSettings = SamplerSettings()
    denoising_strength: float | None = None
    fix_steps: bool = False


@dataclass(frozen=True)
class MaskPlan:
    """An inpainting mask as sent (white = repaint) and how to prepare it (A1111 modules/processing.py:
    StableDiffusionProcessingImg2Img.init)."""

    image: Image.Image
    blur_x: int = 4
    blur_y: int = 4
    round: bool = True
    invert: bool = False
    masked_content: str = "fill"
    only_masked: bool = True
    only_masked_padding: int = 0


@dataclass(frozen=True)
class Img2ImgPlan:
    """The img2img part of a plan; its schedule walks the tail for the strength (A1111
    modules/sd_samplers_common.py: setup_img2img_steps; see `GenerationPlan.schedule`).

    One init image is used for the whole batch, else one per image of a batch.
    """

    init_images: tuple[Image.Image, ...]
    denoising_strength: float
    resize_mode: int = 0
    mask: MaskPlan | None = None
    initial_noise_multiplier: float = 1.0
    image_cfg_scale: float | None = None
    background_color: str = "#ffffff"
    overlay: bool = True
    fix_steps: bool = False  # option img2img_fix_steps (img2img.img2img_steps)
    # Option img2img_color_correction: each result's colours matched to its processed init image (A1111
    # modules/processing.py: apply_color_correction, apply_overlay).
    color_correction: bool = False


@dataclass(frozen=True)
class NetworkRequest:
    """A LoRA/LyCORIS file a pass runs with: `<lora:name:te:unet:dyn>` resolved to its file (A1111
    extensions-builtin/Lora/extra_networks_lora.py: activate)."""

    name: str  # as written in the prompt
    path: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


@dataclass(frozen=True)
class HiresPlan:
    """txt2img's second pass (A1111 modules/processing.py: StableDiffusionProcessingTxt2Img.sample_hr_pass):
    upscale to width×height, crop the latent by truncate_x/y, then img2img."""

    width: int
    height: int
    upscaler: str
    sampler: str
    scheduler: str
    steps: int
    denoising_strength: float
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    truncate_x: int = 0
    truncate_y: int = 0
    image_upscaler: object | None = None  # a model upscaler (`.upscale(image, scale)`) when `upscaler` names one
    # hr_checkpoint_name: the short title of another checkpoint that runs this pass (its pipeline is handed to
    # `Pipeline.txt2img` as `hires_pipeline`, and resolves the pass's schedule); None runs it on the first model.
    checkpoint: str | None = None
    # The request's values as the infotext reports them (A1111 `StableDiffusionProcessingTxt2Img.init`,
    # `calculate_target_resolution`): hr_resize_x/y (0 unset), hr_scale, hr_second_pass_steps (0: the first pass's
    # count) and hr_upscaler (None when not sent; `upscaler` is then "Latent").
    resize_x: int = 0
    resize_y: int = 0
    scale: float = 2.0
    requested_steps: int = 0
    upscaler_label: str | None = None
    networks: tuple[NetworkRequest, ...] = ()  # from the hires prompt (A1111 re-parses it for this pass)


@dataclass(frozen=True)
class RefinerPlan:
    """refiner_checkpoint / refiner_switch_at (A1111 modules/sd_samplers_common.py: apply_refiner): the sampler
    continues on `checkpoint` (a short title; its pipeline is handed to the pipeline as `refiner_pipeline`) from
    the call where the completed fraction reaches `switch_at` (None: from the first call)."""

    checkpoint: str
    switch_at: float | None = None
    by_sample_steps: bool = False  # option refiner_switch_by_sample_steps
    hires_pass: str = "second pass"  # option hires_fix_refiner_pass: "first pass", "second pass", "both passes"


@dataclass(frozen=True)
class Report:
    """What the response reports (infotext, `info`) but the engine never reads, resolved with the plan.

    `denoising_strength` is `info.denoising_strength`: the pass's strength, else txt2img's as sent (or None).
    The flags are options A1111's `create_infotext` reads: add_model_hash_to_info, add_model_name_to_info,
    add_version_to_infotext; `restore_faces` is option face_restoration, `warnings` name the options in effect
    that sdedge does not implement.
    """

    styles: tuple[str, ...] = ()
    denoising_strength: float | None = None
    restore_faces: bool = False
    # With restore_faces: option face_restoration_model (the restorer's name) and code_former_weight (CodeFormer's
    # fidelity); the service restores the decoded images (service/runtime/face_restoration.py).
    face_restoration_model: str | None = None
    code_former_weight: float = 0.5
    model_hash: bool = True
    model_name: bool = True
    version: bool = True
    warnings: tuple[str, ...] = ()
    lora_hashes: str | None = None  # `Lora hashes` (both passes), option lora_add_hashes_to_infotext applied
    # `TI hashes` (embeddings the prompts used, known once the model is; service/runtime/embeddings.py)
    ti_hashes: str | None = None
    comments: tuple[str, ...] = ()  # A1111's job comments, e.g. `Lora not found: x`
    # A separate VAE file in use: (basename, first 10 hex of its sha256), else None; the flags are options
    # add_vae_name_to_info, add_vae_hash_to_info (`info.sd_vae_name/hash` report it regardless).
    vae: tuple[str, str] | None = None
    vae_name: bool = True
    vae_hash: bool = True


@dataclass(frozen=True)
class GenerationPlan:
    """Everything the pipeline needs for one txt2img job; every value already resolved.

    `prompts`, `negative_prompts`, `seeds` and `subseeds` have one entry per image (batch_size × n_iter).
    The σ schedules are not here: `schedule` and `hires_schedule` specify them, the pipeline resolves them.
    """

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str
    batch_size: int = 1
    n_iter: int = 1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    clip_skip: int = 1
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    randn_source: str = "GPU"
    eta_noise_seed_delta: int = 0
    # "GPU" imitates torch's CUDA randn on a GPU with this many resident threads (SMs × max threads per SM);
    # None gives NV, which equals it whenever a latent has at most that many elements (A1111
    # modules/rng_philox.py).
    gpu_rng_threads: int | None = None
    img2img: Img2ImgPlan | None = None
    hires: HiresPlan | None = None
    # Option inpainting_mask_weight: 9-channel UNets see lerp(image, masked image, weight) (A1111
    # modules/processing.py: StableDiffusionProcessing.img2img_image_conditioning,
    # StableDiffusionProcessingTxt2Img.sample_hr_pass).
    inpainting_mask_weight: float = 1.0
    sampler_settings: SamplerSettings = SamplerSettings()
    # Prompt language (A1111 modules/prompt_parser.py): options `emphasis`, `comma_padding_backtrack`,
    # `use_old_scheduling`;
    # the extra-network tags of the batch's first prompt (engine.prompt_parser.batch_extra_networks); `networks`:
    # the LoRA files they resolved to, which the service applies by running the pass on merged sessions.
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    use_old_scheduling: bool = False
    extra_networks: tuple[ExtraNetworkTag, ...] = ()
    networks: tuple[NetworkRequest, ...] = ()
    # Request `tiling` (null: option `tiling`): the UNet and the VAE with circular padding (engine/tiling.py).
    tiling: bool = False
    # restore_faces with an installed restorer: image → image with its faces restored, applied to each decoded
    # image before colour correction and the overlay (engine/face_restoration.py; None: not restoring).
    face_restorer: object | None = None
    report: Report = Report()
    # SDXL options sdxl_crop_top/left, sdxl_refiner_*_aesthetic_score, sdxl_clip_l_skip (the size is the pass's).
    sdxl: SdxlOptions = SdxlOptions()
    refiner: RefinerPlan | None = None

    @property
    def text_encoder_options(self) -> TextEncoderOptions:
        return TextEncoderOptions(self.clip_skip, self.emphasis, self.comma_padding_backtrack, self.sdxl)

    @property
    def schedule(self) -> ScheduleSpec:
        """The first pass's schedule: txt2img's whole, img2img's tail for the strength."""
        i = self.img2img
        return ScheduleSpec(self.sampler, self.scheduler, self.steps, self.sampler_settings,
                            i.denoising_strength if i else None, i.fix_steps if i else False)

    @property
    def hires_schedule(self) -> ScheduleSpec | None:
        """The hires pass's schedule: given its step count explicitly, so A1111's fixed-steps formula applies."""
        hr = self.hires
        if hr is None:
            return None
        return ScheduleSpec(hr.sampler, hr.scheduler, hr.steps, self.sampler_settings, hr.denoising_strength, True)

    @property
    def total_steps(self) -> int:
        """The step count prompt-edit schedules span: doubled for second-order samplers (A1111
        modules/processing.py: StableDiffusionProcessing.setup_conds, via
        sd_samplers_common.SamplerData.total_steps)."""
        return SAMPLERS[self.sampler].total_steps(self.steps)

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def batch(self, n: int) -> slice:
        """The image indices of batch iteration n."""
        return slice(n * self.batch_size, (n + 1) * self.batch_size)

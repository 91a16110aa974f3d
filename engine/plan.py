"""A generation request as the engine sees it: a small immutable plan, built before any tensor work."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from engine.conditioning import TextEncoderOptions
from engine.prompt_parser import ExtraNetworkTag
from engine.samplers import SAMPLERS, SamplerSettings

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # inpainting_fill 0–3


@dataclass(frozen=True)
class MaskPlan:
    """An inpainting mask as sent (white = repaint) and how to prepare it (a1111-sampling.md §8.1, §8.4)."""

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
    """The img2img part of a plan; the plan's `sigmas` is already the schedule truncated for the strength (§8.3).

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
    brownian_span: tuple[float, float] | None = None  # the full schedule's σ range (img2img.brownian_span)
    fix_steps: bool = False  # option img2img_fix_steps, with which `sigmas` was cut (img2img.img2img_steps)
    # Option img2img_color_correction: each result's colours matched to its processed init image (§8.8).
    color_correction: bool = False


@dataclass(frozen=True)
class HiresPlan:
    """txt2img's second pass (§9): upscale to width×height, crop the latent by truncate_x/y, then img2img."""

    width: int
    height: int
    upscaler: str
    sampler: str
    scheduler: str
    steps: int
    sigmas: tuple[float, ...]
    denoising_strength: float
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    truncate_x: int = 0
    truncate_y: int = 0
    image_upscaler: object | None = None  # a model upscaler (`.upscale(image, scale)`) when `upscaler` names one
    brownian_span: tuple[float, float] | None = None  # the full schedule's σ range (img2img.brownian_span)
    # hr_checkpoint_name: the short title of another checkpoint that runs this pass (its pipeline is handed to
    # `Pipeline.txt2img` as `hires_pipeline`, and `sigmas` are that model's); None runs it on the first model.
    checkpoint: str | None = None


@dataclass(frozen=True)
class GenerationPlan:
    """Everything the pipeline needs for one txt2img job; every value already resolved.

    `prompts`, `negative_prompts`, `seeds` and `subseeds` have one entry per image (batch_size × n_iter).
    `sigmas` is the full schedule of the sampler (steps + 1 values, ending in 0 for most schedulers).
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
    sigmas: tuple[float, ...]
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
    # None gives NV, which equals it whenever a latent has at most that many elements (a1111-sampling.md §6.3).
    gpu_rng_threads: int | None = None
    img2img: Img2ImgPlan | None = None
    hires: HiresPlan | None = None
    # Option inpainting_mask_weight: 9-channel UNets see lerp(image, masked image, weight) (§8.7, §9 step 1).
    inpainting_mask_weight: float = 1.0
    sampler_settings: SamplerSettings = SamplerSettings()
    # Prompt language (a1111-sampling.md §7): options `emphasis`, `comma_padding_backtrack`, `use_old_scheduling`;
    # the extra-network tags of the batch's first prompt (engine.prompt_parser.batch_extra_networks), not applied.
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    use_old_scheduling: bool = False
    extra_networks: tuple[ExtraNetworkTag, ...] = ()

    @property
    def text_encoder_options(self) -> TextEncoderOptions:
        return TextEncoderOptions(self.clip_skip, self.emphasis, self.comma_padding_backtrack)

    @property
    def total_steps(self) -> int:
        """The step count prompt-edit schedules span: doubled for second-order samplers (a1111-sampling.md §1)."""
        return SAMPLERS[self.sampler].total_steps(self.steps)

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def batch(self, n: int) -> slice:
        """The image indices of batch iteration n."""
        return slice(n * self.batch_size, (n + 1) * self.batch_size)

"""img2img, inpainting and hires fix as A1111 prepares them (A1111 modules/processing.py:
StableDiffusionProcessingImg2Img,
StableDiffusionProcessingTxt2Img.sample_hr_pass): step counting for a
denoising strength, init images and masks, latent masks, the inpainting/edit image conditioning, hires sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from engine import image_ops
from engine.image_ops import Box
from engine.plan import Img2ImgPlan, ScheduleSpec
from engine.rng import make_generator
from engine.samplers import SamplerSettings

Encode = Callable[[np.ndarray], np.ndarray]  # images [B, 3, H, W] in [0, 1] → latents [B, 4, H/8, W/8]
# A model's σ schedule: (sampler, scheduler, steps, settings) → steps + 1 values for most schedulers.
SigmasFor = Callable[[str, str, int, SamplerSettings], Sequence[float]]


def img2img_steps(steps: int, strength: float, fix_steps: bool) -> tuple[int, int]:
    """`setup_img2img_steps` (A1111 modules/sd_samplers_common.py): (length of the schedule to build, t_enc).
    The sampler runs t_enc + 1 steps.

    With `fix_steps` (option img2img_fix_steps, and always for the hires pass) exactly `steps` steps run.
    """
    if fix_steps:
        return (int(steps / min(strength, 0.999)) if strength > 0 else 0), steps - 1
    return steps, int(min(strength, 0.999) * steps)


def denoising_schedule(
    sigmas_for: Callable[[int], Sequence[float]], steps: int, strength: float, fix_steps: bool
) -> tuple[float, ...]:
    """The tail of the full schedule that img2img walks: `σ(steps')[steps' − t_enc − 1:]`.

    Strength 0 with fixed steps builds an empty schedule in A1111: nothing is denoised.
    """
    total, t_enc = img2img_steps(steps, strength, fix_steps)
    if total == 0:
        return (0.0,)
    sigmas = [float(s) for s in sigmas_for(total)]
    return tuple(sigmas[total - t_enc - 1 :])


def brownian_span(
    sigmas_for: Callable[[int], Sequence[float]], steps: int, strength: float, fix_steps: bool
) -> tuple[float, float] | None:
    """[min positive σ, max σ] of the whole schedule `denoising_schedule` cuts its tail from: A1111's Brownian
    trees span it, not the walked tail (A1111 modules/sd_samplers_kdiffusion.py:
    KDiffusionSampler.sample_img2img). None when nothing is denoised."""
    total, _ = img2img_steps(steps, strength, fix_steps)
    if total == 0:
        return None
    sigmas = np.asarray(sigmas_for(total), dtype=np.float32)
    return float(sigmas[sigmas > 0].min()), float(sigmas.max())


@dataclass(frozen=True)
class ResolvedSchedule:
    """A `ScheduleSpec` on one model: the σ the sampler walks, and the σ range of the Brownian trees when it is
    not that of `sigmas` (img2img and the hires pass: the whole schedule the tail was cut from)."""

    sigmas: np.ndarray
    brownian_span: tuple[float, float] | None = None


def resolve_schedule(spec: ScheduleSpec, sigmas_for: SigmasFor) -> ResolvedSchedule:
    """The σ schedule `spec` asks for, from a model's `sigmas_for` (engine.pipeline.Pipeline.sigmas)."""

    def full(steps: int) -> Sequence[float]:
        return sigmas_for(spec.sampler, spec.scheduler, steps, spec.settings)

    if spec.denoising_strength is None:
        return ResolvedSchedule(np.asarray([float(s) for s in full(spec.steps)], dtype=np.float32))
    strength, fix_steps = spec.denoising_strength, spec.fix_steps
    sigmas = denoising_schedule(full, spec.steps, strength, fix_steps)
    return ResolvedSchedule(np.asarray(sigmas, dtype=np.float32), brownian_span(full, spec.steps, strength, fix_steps))


@dataclass(frozen=True)
class HiresSize:
    """Hires fix's upscale target and the latent rows/columns to crop afterwards (A1111 modules/processing.py:
    StableDiffusionProcessingTxt2Img.sample_hr_pass)."""

    width: int
    height: int
    truncate_x: int = 0
    truncate_y: int = 0

    def final_size(self, factor: int = 8) -> tuple[int, int]:
        return (self.width // factor - self.truncate_x) * factor, (self.height // factor - self.truncate_y) * factor


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0,
               factor: int = 8) -> HiresSize:
    """A1111's target for `hr_scale` or `hr_resize_x/y`: one side given keeps the aspect ratio; both given cover
    that box and crop the excess (in latent space)."""
    if resize_x == 0 and resize_y == 0:
        return HiresSize(int(width * scale), int(height * scale))
    if resize_y == 0:
        return HiresSize(resize_x, resize_x * height // width)
    if resize_x == 0:
        return HiresSize(resize_y * width // height, resize_y)
    if width / height < resize_x / resize_y:
        x, y = resize_x, resize_x * height // width
    else:
        x, y = resize_y * width // height, resize_y
    return HiresSize(x, y, (x - resize_x) // factor, (y - resize_y) // factor)


def crop_latents(latents: np.ndarray, truncate_x: int, truncate_y: int) -> np.ndarray:
    h, w = latents.shape[2:]
    return latents[:, :, truncate_y // 2 : h - (truncate_y + 1) // 2, truncate_x // 2 : w - (truncate_x + 1) // 2]


@dataclass(frozen=True)
class PreparedInit:
    """Init images and mask after A1111's `init()` image work, before any VAE call.

    `images`: one [3, H, W] array in [0, 1] per init image (its own size with resize mode 3).
    `mask`: the processed mask at width×height (source of the latent mask and inpainting conditioning), or None.
    `overlays`: per init image, the original with alpha 255 − mask, composited over the results.
    `mask_for_overlay`: A1111's `p.mask_for_overlay` (blurred; doubled for "whole picture"), or None.
    """

    images: tuple[np.ndarray, ...]
    mask: Image.Image | None = None
    overlays: tuple[Image.Image, ...] = ()
    paste_to: Box | None = None
    mask_for_overlay: Image.Image | None = None


def prepare_init(plan: Img2ImgPlan, width: int, height: int) -> PreparedInit:
    """Resize/crop init images, build the mask, overlay and fill as A1111's img2img `init()` does (A1111
    modules/processing.py: StableDiffusionProcessingImg2Img.init)."""
    mask = mask_for_overlay = crop = paste_to = None
    spec = plan.mask
    if spec is not None:
        binary = image_ops.binary_mask(spec.image, spec.round)
        if spec.invert:
            binary = ImageOps.invert(binary)
        binary = image_ops.blur_mask(binary, spec.blur_x, spec.blur_y)
        if spec.only_masked:
            crop = image_ops.crop_region(binary, spec.only_masked_padding)
            if crop is not None:  # an all-black mask means plain img2img
                crop = image_ops.expand_crop_region(crop, width, height, binary.width, binary.height)
                mask_for_overlay = binary
                mask = image_ops.resize_image(image_ops.RESIZE_AND_FILL, binary.crop(crop), width, height)
                paste_to = (crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1])
        else:
            mask = image_ops.resize_image(plan.resize_mode, binary, width, height)
            doubled = np.clip(np.asarray(mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
            mask_for_overlay = Image.fromarray(doubled)
    images, overlays = [], []
    for init in plan.init_images:
        image = image_ops.flatten(init, plan.background_color)
        if crop is None and plan.resize_mode != image_ops.LATENT_UPSCALE:
            image = image_ops.resize_image(plan.resize_mode, image, width, height)
        if mask is not None:
            if mask_for_overlay.size != image.size:
                mask_for_overlay = image_ops.resize_image(plan.resize_mode, mask_for_overlay, *image.size)
            overlays.append(image_ops.overlay_image(image, mask_for_overlay))
        if crop is not None:
            image = image_ops.resize_image(image_ops.RESIZE_AND_FILL, image.crop(crop), width, height)
        if mask is not None and spec.masked_content != "original":
            image = image_ops.fill(image, mask)
        images.append(image_ops.to_array([image])[0])
    return PreparedInit(tuple(images), mask, tuple(overlays) if plan.overlay else (), paste_to, mask_for_overlay)


def denoised_image(image: Image.Image, overlay: Image.Image | None, paste_to: Box | None) -> Image.Image:
    """A1111's `original_denoised_image`: a result before the overlay goes on; for "only masked" fitted into its
    box on a transparent canvas of the original's size (as `apply_overlay` does, which skips both without an
    overlay)."""
    if overlay is None or paste_to is None:
        return image
    x, y, w, h = paste_to
    canvas = Image.new("RGBA", overlay.size)
    canvas.paste(image_ops.resize_image(image_ops.CROP_AND_RESIZE, image, w, h), (x, y))
    return canvas


def mask_composite(denoised: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """Option `return_mask_composite`'s image: the denoised result with the overlay mask as its alpha (A1111 1.10
    composites premultiplied, so colours where the mask is 0 come out black)."""
    alpha = image_ops.resize_image(image_ops.RESIZE_AND_FILL, mask_for_overlay, *denoised.size).convert("L")
    premultiplied = denoised.convert("RGBA").convert("RGBa")
    return Image.composite(premultiplied, Image.new("RGBa", denoised.size), alpha).convert("RGBA")


def latent_nmask(mask: Image.Image, height: int, width: int, round: bool = True) -> np.ndarray:
    """A1111 modules/processing.py: StableDiffusionProcessingImg2Img.init: the mask at latent size (Pillow's
    default BICUBIC), 1 = repaint; [1, 1, h, w] float32."""
    small = mask.convert("RGB").resize((width, height), resample=Image.Resampling.BICUBIC)
    nmask = np.asarray(small, dtype=np.float32)[..., 0] / 255
    if round:
        nmask = np.around(nmask)
    return nmask[None, None].astype(np.float32)


def inpainting_conditioning(encode: Encode, images: np.ndarray, mask: Image.Image | None, latent_hw: tuple[int, int],
                            round: bool = True, mask_weight: float = 1.0) -> np.ndarray:
    """A1111 modules/processing.py: StableDiffusionProcessing.img2img_image_conditioning: [mask, latent of the
    masked image] per image for 9-channel UNets. `images` are the init batch in
    [0, 1]; masked pixels go to mid-grey (0 in [−1, 1]) by `mask_weight` (option inpainting_mask_weight, 1 = all
    the way); no mask means everything is masked."""
    source = 2.0 * images - 1.0
    if mask is None:
        cond_mask = np.ones((1, 1, *images.shape[2:]), dtype=np.float32)
    else:
        cond_mask = (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        if round:
            cond_mask = np.round(cond_mask)
    masked = source + mask_weight * (source * (1.0 - cond_mask) - source)  # torch.lerp
    latents = encode((masked + 1.0) / 2.0)
    if latents.shape[2:] != tuple(latent_hw):  # resize mode 3: the image is encoded at its own size
        latents = image_ops.resize_latents(latents, *latent_hw, mode="bilinear")
    small = image_ops.resize_latents(cond_mask, *latent_hw, mode="nearest")
    return np.concatenate([np.repeat(small, len(latents), axis=0), latents], axis=1).astype(np.float32)


def encoder_noise(seeds: Sequence[int], randn_source: str) -> Callable[[tuple[int, ...]], np.ndarray] | None:
    """ε for sampling the VAE posterior where A1111's draw is reproducible, else None (the posterior mean).

    A1111 samples with torch's global CPU generator, which its `randn(seed)` re-seeds with each image's seed
    while drawing the initial noise: after `first()` it is a fresh CPU generator seeded with the batch's last
    seed, drawn in order by every later encode of that batch (A1111 modules/processing.py:
    StableDiffusionProcessingImg2Img.init). The NV source never seeds it.
    """
    if randn_source not in ("GPU", "CPU"):
        return None
    return make_generator(int(seeds[-1]), "CPU").randn


def is_edit_model(unet_in_channels: int) -> bool:
    """instruct-pix2pix UNets take x and the image latent: 8 input channels."""
    return unet_in_channels == 8

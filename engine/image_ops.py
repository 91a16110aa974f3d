"""A1111's PIL image operations for img2img, inpainting and hires fix (A1111 modules/processing.py:
StableDiffusionProcessingImg2Img.init, apply_color_correction, apply_overlay,
StableDiffusionProcessingTxt2Img.sample_hr_pass).

Resize modes, upscalers, mask preparation (binary mask, Gaussian blur, "only masked" crop region), the fill of
masked areas and the final overlay, each written to reproduce A1111's pixels (`images.py`, `masking.py`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter, ImageOps

LANCZOS = Image.Resampling.LANCZOS

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = 0, 1, 2, 3
RESIZE_MODES = {
    JUST_RESIZE: "Just resize",
    CROP_AND_RESIZE: "Crop and resize",
    RESIZE_AND_FILL: "Resize and fill",
    LATENT_UPSCALE: "Just resize (latent upscale)",
}

# Image upscalers A1111 always has (listed first by /sdapi/v1/upscalers): name → PIL resampling of one pass.
# "None" is no upscaler at all: resize_image then does a plain LANCZOS resize.
UPSCALERS: dict[str, Image.Resampling | None] = {
    "None": None,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}


def upscale(image: Image.Image, scale: float, resample: Image.Resampling) -> Image.Image:
    """`Upscaler.upscale`: up to three passes of ×scale, then LANCZOS to the multiple of 8 below w·scale."""
    dest_w = int((image.width * scale) // 8 * 8)
    dest_h = int((image.height * scale) // 8 * 8)
    for i in range(3):
        if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
            break
        shape = image.size
        image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        if shape == image.size:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=LANCZOS)
    return image


def _resize(image: Image.Image, width: int, height: int, upscaler) -> Image.Image:
    # `upscaler`: a built-in's name, or a model upscaler object with `.upscale(image, scale)`.
    named = upscaler is None or isinstance(upscaler, str)
    resample = UPSCALERS.get(upscaler or "None") if named else None
    if (named and resample is None) or image.mode == "L":
        return image.resize((width, height), resample=LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        image = upscale(image, scale, resample) if named else upscaler.upscale(image, scale)
    if image.size != (width, height):
        image = image.resize((width, height), resample=LANCZOS)
    return image


def resize_image(mode: int, image: Image.Image, width: int, height: int, upscaler=None) -> Image.Image:
    """`images.resize_image`: 0 stretch, 1 cover and centre-crop, 2 (and 3) fit and stretch the edges into the bars.

    Modes 1–3 paste onto a new RGB canvas, so a greyscale mask comes back as RGB (as in A1111).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode}")
    if mode == JUST_RESIZE:
        return _resize(image, width, height, upscaler)
    ratio = width / height
    src_ratio = image.width / image.height
    if mode == CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = _resize(image, src_w, src_h, upscaler)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == CROP_AND_RESIZE:
        return result
    # The bars are filled by stretching the zero-height (zero-width) box at the edge: its edge pixels.
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + src_w, 0))
    return result


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Transparent pixels onto `background` (A1111 option `img2img_background_color`), as RGB."""
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, background)
        canvas.paste(image, mask=image)
        image = canvas
    return image.convert("RGB")


def binary_mask(mask: Image.Image, round: bool = True) -> Image.Image:
    """`create_binary_mask`: a not-fully-opaque RGBA mask is its alpha (thresholded >128 when `round`), else L."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.split()[-1].convert("L")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round else alpha
    return mask.convert("L")


def gaussian_kernel_size(sigma: float) -> int:
    """A1111's kernel length for a mask blur of `sigma` pixels."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def _gaussian_kernel_q8(size: int, sigma: float) -> np.ndarray:
    """OpenCV's bit-exact 8-bit kernel: Gaussian weights normalised in float64, quantised to 1/256 with error
    diffusion from the outside in; the centre takes what is left so the weights sum to exactly 256."""
    half = size // 2
    scale2 = -0.125 / (sigma * sigma)
    side = [math.exp(float(x * x) * scale2) for x in range(1 - size, 0, 2)]  # x = 2·(i − half), i < half
    total = 0.0
    for t in side:
        total += t
    inv = 1.0 / (total * 2 + 1.0)
    weights = [t * inv for t in side] + [inv]
    q = np.zeros(size, dtype=np.int64)
    err = 0.0
    for i in range(half):
        v = weights[i] * 256 + err
        q[i] = q[size - 1 - i] = int(np.rint(v))
        err = v - q[i]
    q[half] = 256 - 2 * q[:half].sum()
    return q


def _blur_axis(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    size = gaussian_kernel_size(sigma)
    kernel = _gaussian_kernel_q8(size, sigma)
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(values.astype(np.int64), pad, mode="reflect")  # = OpenCV's default BORDER_REFLECT_101
    n = values.shape[axis]
    acc = np.zeros(values.shape, dtype=np.int64)
    for j, k in enumerate(kernel):
        acc += k * (padded[:, j : j + n] if axis == 1 else padded[j : j + n, :])
    return ((acc + 128) >> 8).astype(np.uint8)


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Horizontal then vertical Gaussian blur of an 8-bit mask, as A1111's two `cv2.GaussianBlur` calls compute it
    (fixed-point kernel, reflect-101 borders, rounding to uint8 after each pass)."""
    values = np.asarray(mask.convert("L"))
    if blur_x > 0:
        values = _blur_axis(values, blur_x, axis=1)
    if blur_y > 0:
        values = _blur_axis(values, blur_y, axis=0)
    return Image.fromarray(values, mode="L")


Box = tuple[int, int, int, int]


def crop_region(mask: Image.Image, padding: int = 0) -> Box | None:
    """`get_crop_region_v2`: bbox of the non-zero mask pixels grown by `padding` (clamped); None if all black."""
    box = mask.getbbox()
    if not box:
        return None
    if not padding:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_crop_region(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """`expand_crop_region`: grow the box to the processing aspect ratio width/height, kept inside the image."""
    x1, y1, x2, y2 = box
    ratio_box = (x2 - x1) / (y2 - y1)
    ratio = width / height
    if ratio_box > ratio:
        diff = int((x2 - x1) / ratio - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            y1 -= y2 - image_height
            y2 = image_height
        if y1 < 0:
            y2 -= y1
            y1 = 0
        y2 = min(y2, image_height)
    else:
        diff = int((y2 - y1) * ratio - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            x1 -= x2 - image_width
            x2 = image_width
        if x1 < 0:
            x2 -= x1
            x1 = 0
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def masked_out(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with alpha 255 − mask, pasted premultiplied (RGBa) as A1111 does for fill and overlay."""
    result = Image.new("RGBa", image.size)
    result.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return result


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """`masking.fill` (inpainting_fill 0): masked pixels become blurred colours of their surroundings."""
    canvas = Image.new("RGBA", image.size)
    source = masked_out(image, mask)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = source.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            canvas.alpha_composite(blurred)
    return canvas.convert("RGB")


def overlay_image(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original as RGBA with alpha 255 − mask: composited over the result, it restores unmasked pixels."""
    return masked_out(image, mask_for_overlay).convert("RGBA")


def apply_overlay(image: Image.Image, overlay: Image.Image | None, paste_to: Box | None = None) -> Image.Image:
    """`apply_overlay`: for "only masked" the result is fitted into its box (x, y, w, h) on a transparent canvas of
    the original's size first; then the overlay goes on top."""
    if overlay is None:
        return image
    if paste_to is not None:
        x, y, w, h = paste_to
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image(CROP_AND_RESIZE, image, w, h), (x, y))
        image = canvas
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


def to_array(images: list[Image.Image]) -> np.ndarray:
    """PIL RGB images of one size → [B, 3, H, W] float32 in [0, 1]."""
    return np.stack([np.moveaxis(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0, -1, 0) for im in images])


def is_blank(mask: Image.Image) -> bool:
    return not mask.getbbox()


# Hires fix's latent upscalers: name → (torch interpolate mode, antialias), A1111 modules/shared.py:
# latent_upscale_modes.
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _axis_weights(n_in: int, n_out: int, mode: str, antialias: bool) -> np.ndarray:
    """[n_out, n_in] interpolation matrix of `torch.nn.functional.interpolate(..., align_corners=False)`."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if antialias:
        # The separable antialiasing kernels torch took from Pillow: the filter widens when downscaling.
        if mode == "bilinear":
            size, kernel = 2, lambda x: np.maximum(0.0, 1 - np.abs(x))
        else:
            size, kernel = 4, lambda x: _cubic(x, -0.5)
        support = size * 0.5 * scale if scale >= 1.0 else size * 0.5
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            w = kernel((np.arange(lo, hi) - center + 0.5) * invscale)
            weights[i, lo:hi] = w / w.sum() if w.sum() else w
        return weights
    if mode == "nearest":
        if n_out == n_in:
            src = rows
        elif n_out == 2 * n_in:
            src = rows >> 1
        else:
            src = np.minimum(np.floor(dst * scale).astype(np.int64), n_in - 1)
        weights[rows, src] = 1.0
    elif mode == "nearest-exact":
        weights[rows, np.minimum(np.floor((dst + np.float32(0.5)) * scale).astype(np.int64), n_in - 1)] = 1.0
    elif mode == "bilinear":
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        np.add.at(weights, (rows, i0), 1 - frac)
        np.add.at(weights, (rows, i1), frac)
    elif mode == "bicubic":
        src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
        i0 = np.floor(src).astype(np.int64)
        t = src - i0
        for k, w in enumerate(_cubic(np.stack([t + 1, t, 1 - t, 2 - t]), -0.75)):
            np.add.at(weights, (rows, np.clip(i0 - 1 + k, 0, n_in - 1)), w)
    else:
        raise ValueError(f"unknown interpolation mode {mode!r}")
    return weights


def resize_latents(latents: np.ndarray, height: int, width: int, mode: str = "bilinear",
                   antialias: bool = False) -> np.ndarray:
    """[B, C, h, w] → [B, C, height, width] as `torch.nn.functional.interpolate` (align_corners=False) does."""
    wy = _axis_weights(latents.shape[2], height, mode, antialias)
    wx = _axis_weights(latents.shape[3], width, mode, antialias)
    return np.einsum("oh,bchw,pw->bcop", wy, latents.astype(np.float64), wx).astype(np.float32)

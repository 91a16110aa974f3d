"""Test images: seeded noise pictures, box masks, and base64 PNGs as sdapi requests carry them."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White (repaint) inside `box`, black elsewhere."""
    mask = Image.new("L", size)
    mask.paste(255, box)
    return mask


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()

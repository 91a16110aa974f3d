"""Synthetic training scenes drawn with PIL: one coloured shape on a background, with a plain-English caption.

Every attribute left out of a caption is still drawn, so a short prompt ("a red circle") means "any position,
any size" — except the background, which is white whenever the caption does not name it. That keeps short
prompts dominated by the shape's colour, which is what the colour tests measure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "red": COLOURS["red"],
    "green": COLOURS["green"],
    "blue": COLOURS["blue"],
    "yellow": COLOURS["yellow"],
}
SHAPES = ("circle", "square", "triangle")
# Centre of the shape as a fraction of the image side; words as a user would type them.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "centre": ("in the centre", "in the center"),
}
# Radius as a fraction of the image side.
SIZES: dict[str, tuple[float, float]] = {"small": (0.13, 0.17), "large": (0.24, 0.28)}
DEFAULT_BACKGROUND = "white"


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str
    caption: str


def sample_scene(rng: random.Random, caption_dropout: float = 0.1) -> Scene:
    """A random scene; each attribute is named in the caption with some probability, so partial prompts work."""
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    position = rng.choice(list(POSITIONS))
    size = rng.choice(list(SIZES))
    name_background = rng.random() < 0.6
    if name_background:
        background = rng.choice([b for b in BACKGROUNDS if b != colour])
    else:
        background = DEFAULT_BACKGROUND
    words = ["a"]
    if rng.random() < 0.5:
        words.append(size)
    words += [colour, shape]
    if rng.random() < 0.75:
        words.append(rng.choice(POSITION_PHRASES[position]))
    caption = " ".join(words)
    if name_background:
        caption += f", {background} background"
    if rng.random() < caption_dropout:
        caption = ""  # unconditional examples: classifier-free guidance needs them
    return Scene(shape, colour, background, position, size, caption)


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene at `size`×`size` px with a little jitter in place and size (4× supersampled edges)."""
    scale = 4
    side = size * scale
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    cx = (fx + rng.uniform(-0.04, 0.04)) * side
    cy = (fy + rng.uniform(-0.04, 0.04)) * side
    r = rng.uniform(*SIZES[scene.size]) * side
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        h = r * 0.9
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def sample_batch(rng: random.Random, batch_size: int, size: int = 64,
                 caption_dropout: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """A batch as float32 [N, 3, size, size] in [-1, 1] and its captions."""
    scenes = [sample_scene(rng, caption_dropout) for _ in range(batch_size)]
    pixels = np.stack([np.asarray(render(s, size, rng), dtype=np.float32) for s in scenes])
    return pixels.transpose(0, 3, 1, 2) / 127.5 - 1.0, [s.caption for s in scenes]

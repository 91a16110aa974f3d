"""The trained shapes model, exported by export/ and run by the engine, draws what it is asked.

Colours are judged by hue against the palette the training scenes were drawn with (export/synthetic_shapes);
only saturated pixels count, so the white default background does not.
"""

from __future__ import annotations

import colorsys
import dataclasses
import random

import numpy as np
import pytest

from engine.plan import GenerationPlan
from export.synthetic_shapes import COLOURS, POSITIONS, Scene, render

SEEDS = tuple(range(100, 110))
HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in COLOURS.items()}


@pytest.fixture(scope="module")
def shapes_pipeline(shapes_bundle):
    from engine.pipeline import Pipeline

    return Pipeline.from_path(shapes_bundle, "cpu")


def make_plan(pipeline, prompts, seeds=SEEDS, sampler="Euler a", steps=20, cfg_scale=7.0, size=(64, 64),
              **extra) -> GenerationPlan:
    if isinstance(prompts, str):
        prompts = (prompts,) * len(seeds)
    return GenerationPlan(
        prompts=tuple(prompts), negative_prompts=("",) * len(seeds), seeds=tuple(seeds),
        subseeds=tuple(seeds), width=size[0], height=size[1], steps=steps, cfg_scale=cfg_scale,
        sampler=sampler, scheduler="automatic", batch_size=len(seeds), **extra,
    )


def colour_masks(image) -> dict[str, np.ndarray]:
    """Saturated, not-dark pixels assigned to the palette colour of nearest hue."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    vivid = (sat > 0.45) & (val > 0.35)
    names = list(HUES)
    distance = np.stack([np.minimum(abs(hue - HUES[n]), 1 - abs(hue - HUES[n])) for n in names])
    nearest = distance.argmin(axis=0)
    return {n: vivid & (nearest == i) for i, n in enumerate(names)}


def dominant_colour(image) -> str | None:
    counts = {name: int(mask.sum()) for name, mask in colour_masks(image).items()}
    name = max(counts, key=counts.get)
    return name if counts[name] >= 0.02 * image.width * image.height else None


def centroid(image, colour: str) -> tuple[float, float]:
    ys, xs = np.nonzero(colour_masks(image)[colour])
    if len(xs) == 0:
        return (float("nan"), float("nan"))
    return (xs.mean() / image.width, ys.mean() / image.height)


def test_metric_reads_the_training_scenes():
    """The colour and position measures agree with scenes drawn by the data generator itself."""
    rng = random.Random(0)
    for colour in COLOURS:
        for position, (fx, fy) in POSITIONS.items():
            image = render(Scene("circle", colour, "white", position, "small", ""), 64, rng)
            assert dominant_colour(image) == colour
            cx, cy = centroid(image, colour)
            assert abs(cx - fx) < 0.06 and abs(cy - fy) < 0.06


@pytest.mark.parametrize("prompt,colour", [("a red circle", "red"), ("a blue square", "blue")])
@pytest.mark.slow
def test_colour_follows_prompt(shapes_pipeline, prompt, colour):
    images = shapes_pipeline.txt2img(make_plan(shapes_pipeline, prompt)).images
    found = [dominant_colour(image) for image in images]
    assert sum(f == colour for f in found) >= 8, found


@pytest.mark.slow
def test_position_words_move_the_shape(shapes_pipeline):
    def centroids(where: str) -> np.ndarray:
        plan = make_plan(shapes_pipeline, f"a red circle {where}")
        return np.array([centroid(image, "red") for image in shapes_pipeline.txt2img(plan).images])

    left, right = centroids("on the left"), centroids("on the right")
    top, bottom = centroids("at the top"), centroids("at the bottom")
    assert np.sum(left[:, 0] < right[:, 0]) >= 8, (left[:, 0], right[:, 0])
    assert np.sum(top[:, 1] < bottom[:, 1]) >= 8, (top[:, 1], bottom[:, 1])
    assert np.nanmedian(left[:, 0]) < 0.45 < 0.55 < np.nanmedian(right[:, 0])
    assert np.nanmedian(top[:, 1]) < 0.45 < 0.55 < np.nanmedian(bottom[:, 1])


@pytest.mark.slow
def test_cfg_scale_changes_prompt_adherence(shapes_pipeline):
    """Adherence = images whose shape sits where the prompt says (4 positions × 10 seeds)."""
    asked = [("on the left", 0, -1), ("on the right", 0, 1), ("at the top", 1, -1), ("at the bottom", 1, 1)]

    def adherent(cfg_scale: float) -> int:
        count = 0
        for where, axis, side in asked:
            plan = make_plan(shapes_pipeline, f"a red circle {where}", cfg_scale=cfg_scale)
            for image in shapes_pipeline.txt2img(plan).images:
                offset = centroid(image, "red")[axis] - 0.5
                count += int(side * offset > 0.1)
        return count

    weak, strong = adherent(1.0), adherent(7.0)
    assert strong >= 36 and strong - weak >= 4, (weak, strong)


@pytest.mark.slow
def test_every_sampler_gets_the_colour_right(shapes_pipeline):
    from engine.samplers import SAMPLERS

    seeds = SEEDS[:4]
    wrong = {}
    for name in SAMPLERS:
        plan = make_plan(shapes_pipeline, ("a red circle",) * 2 + ("a blue square",) * 2, seeds=seeds,
                         sampler=name)
        found = [dominant_colour(image) for image in shapes_pipeline.txt2img(plan).images]
        if found != ["red", "red", "blue", "blue"]:
            wrong[name] = found
    # A single miss in 4 images is allowed for a sampler; two are not.
    assert all(sum(f != e for f, e in zip(v, ["red", "red", "blue", "blue"], strict=True)) <= 1
               for v in wrong.values()), wrong


@pytest.mark.parametrize("size", [(96, 64), (64, 112)])
@pytest.mark.slow
def test_other_sizes_still_draw_the_colour(shapes_pipeline, size):
    images = shapes_pipeline.txt2img(make_plan(shapes_pipeline, "a blue square", size=size)).images
    assert images[0].size == size
    assert sum(dominant_colour(image) == "blue" for image in images) >= 8


def img2img_plan(pipeline, init, prompt, strength, seeds=SEEDS, mask=None, sampler="Euler a", steps=20):
    from engine.plan import Img2ImgPlan

    plan = make_plan(pipeline, prompt, seeds=seeds, sampler=sampler, steps=steps)
    spec = Img2ImgPlan(init_images=(init,), denoising_strength=strength, mask=mask)
    return dataclasses.replace(plan, img2img=spec)


def vivid_mask(image) -> np.ndarray:
    return np.logical_or.reduce(list(colour_masks(image).values()))


@pytest.mark.slow
def test_img2img_low_strength_keeps_the_layout(shapes_pipeline):
    init = render(Scene("circle", "red", "white", "left", "large", ""), 64, random.Random(1))
    # The prompt pulls the other way; at CFG 7 this small model does recolour at any strength (diffusers'
    # img2img pipeline on the same weights does too), so the layout — where the shape is — is what is kept.
    prompt = "a blue square on the right"
    before = vivid_mask(init)

    def layouts(strength: float) -> list[tuple[float, float]]:
        """(x of the shape's centroid, IoU with the init image's shape) per seed."""
        images = shapes_pipeline.img2img(img2img_plan(shapes_pipeline, init, prompt, strength)).images
        out = []
        for image in images:
            after = vivid_mask(image)
            iou = (after & before).sum() / max((after | before).sum(), 1)
            out.append((float(np.nonzero(after)[1].mean() / 64) if after.any() else float("nan"), float(iou)))
        return out

    kept = layouts(0.3)
    assert sum(x < 0.4 and iou > 0.5 for x, iou in kept) >= 8, kept
    moved = layouts(1.0)  # full strength follows the prompt: the check above can fail
    assert sum(x > 0.6 for x, _ in moved) >= 8, moved


@pytest.mark.slow
def test_inpainting_one_half_changes_it_and_keeps_the_other(shapes_pipeline):
    from PIL import Image

    from engine.plan import MaskPlan

    init = render(Scene("circle", "red", "white", "left", "small", ""), 64, random.Random(2))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # white = repaint the right half
    spec = MaskPlan(image=mask, blur_x=0, blur_y=0, only_masked=False)
    plan = img2img_plan(shapes_pipeline, init, "a blue square on the right", 1.0, mask=spec)
    images = shapes_pipeline.img2img(plan).images
    before = np.asarray(init)
    assert not colour_masks(init)["blue"].any()
    changed = 0
    for image in images:
        np.testing.assert_array_equal(np.asarray(image)[:, :32], before[:, :32])  # overlay keeps the left half
        changed += int(colour_masks(image.crop((32, 0, 64, 64)))["blue"].sum() > 0.1 * 32 * 64)
    assert changed >= 8

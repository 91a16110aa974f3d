"""A1111's PIL image operations: resize modes, upscalers, masks, blur (OpenCV as reference), crop regions,
fill and overlay (A1111 modules/processing.py: StableDiffusionProcessingImg2Img.init, apply_color_correction,
apply_overlay)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import image_ops
from engine.image_ops import (
    CROP_AND_RESIZE,
    JUST_RESIZE,
    LATENT_UPSCALE,
    RESIZE_AND_FILL,
    apply_overlay,
    binary_mask,
    blur_mask,
    crop_region,
    expand_crop_region,
    fill,
    overlay_image,
    resize_image,
)
from tests.images import noise_image


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_just_resize_is_a_lanczos_stretch():
    image = noise_image(100, 50)
    out = resize_image(JUST_RESIZE, image, 64, 72)
    assert out.size == (64, 72)
    np.testing.assert_array_equal(arr(out), arr(image.resize((64, 72), Image.Resampling.LANCZOS)))


@pytest.mark.parametrize("source,scaled,offset", [((100, 50), (128, 64), (32, 0)), ((50, 100), (64, 128), (0, 32))])
def test_crop_and_resize_covers_and_centres(source, scaled, offset):
    image = noise_image(*source)
    out = resize_image(CROP_AND_RESIZE, image, 64, 64)
    assert out.size == (64, 64)
    cover = image.resize(scaled, Image.Resampling.LANCZOS)
    expected = cover.crop((offset[0], offset[1], offset[0] + 64, offset[1] + 64))
    np.testing.assert_array_equal(arr(out), arr(expected))


def test_resize_and_fill_fits_centres_and_stretches_the_edges():
    image = noise_image(100, 50)  # wider than the 64×64 target: fitted to 64×32, bars of 16 rows above and below
    out = arr(resize_image(RESIZE_AND_FILL, image, 64, 64))
    fitted = arr(image.resize((64, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[16:48], fitted)
    # Each bar is one row stretched over its height, close to the image's own edge row.
    assert (out[:16] == out[0]).all() and (out[48:] == out[63]).all()
    assert np.abs(out[0] - fitted[0]).mean() < 40 and np.abs(out[63] - fitted[-1]).mean() < 40
    assert np.abs(out[0] - fitted[0]).mean() < np.abs(out[0] - fitted[-1]).mean()


def test_resize_and_fill_tall_image_fills_the_sides():
    image = noise_image(30, 60)
    out = arr(resize_image(RESIZE_AND_FILL, image, 64, 64))
    fitted = arr(image.resize((32, 64), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[:, 16:48], fitted)
    assert (out[:, :16] == out[:, :1]).all() and (out[:, 48:] == out[:, 63:]).all()


def test_latent_upscale_mode_resizes_masks_like_resize_and_fill():
    mask = Image.fromarray((np.random.default_rng(1).random((40, 90)) > 0.5).astype(np.uint8) * 255)
    assert resize_image(LATENT_UPSCALE, mask, 64, 64).tobytes() == resize_image(RESIZE_AND_FILL, mask, 64, 64).tobytes()


def test_nearest_upscaler_passes():
    image = noise_image(40, 30)
    # scale 2.5: one NEAREST pass to 100×75, then LANCZOS to the multiple of 8 below (96×72), then to the target.
    out = resize_image(JUST_RESIZE, image, 100, 75, upscaler="Nearest")
    step = image.resize((100, 75), Image.Resampling.NEAREST).resize((96, 72), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(arr(out), arr(step.resize((100, 75), Image.Resampling.LANCZOS)))
    plain = resize_image(JUST_RESIZE, image, 100, 75, upscaler="None")
    np.testing.assert_array_equal(arr(plain), arr(image.resize((100, 75), Image.Resampling.LANCZOS)))


def test_binary_mask_alpha_rule():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # alpha 0..252, not fully opaque
    rgba[..., :3] = 255  # white colour everywhere: the alpha must win
    mask = np.asarray(binary_mask(Image.fromarray(rgba, "RGBA"), round=True))
    np.testing.assert_array_equal(mask, np.where(rgba[..., 3] > 128, 255, 0))
    raw = np.asarray(binary_mask(Image.fromarray(rgba, "RGBA"), round=False))
    np.testing.assert_array_equal(raw, rgba[..., 3])
    opaque = rgba.copy()
    opaque[..., 3] = 255
    opaque[:4, :, :3] = 0
    np.testing.assert_array_equal(np.asarray(binary_mask(Image.fromarray(opaque, "RGBA"))), opaque[..., 0])


@pytest.mark.parametrize("size,blur_x,blur_y", [((64, 64), 4, 4), ((70, 33), 2, 7), ((9, 5), 6, 0), ((40, 40), 0, 3),
                                                ((64, 48), 1, 1), ((50, 60), 13, 9)])
def test_mask_blur_matches_opencv(size, blur_x, blur_y):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(sum(size) + blur_x)
    mask = (rng.random(size[::-1]) > 0.8).astype(np.uint8) * 255
    mask[size[1] // 4 : size[1] // 2, size[0] // 3 : size[0] // 2] = 255
    expected = mask
    for sigma, kernel in ((blur_x, lambda k: (k, 1)), (blur_y, lambda k: (1, k))):
        if sigma > 0:
            expected = cv2.GaussianBlur(expected, kernel(2 * int(2.5 * sigma + 0.5) + 1), sigma)
    ours = np.asarray(blur_mask(Image.fromarray(mask), blur_x, blur_y))
    np.testing.assert_array_equal(ours, expected)


def test_crop_region_padding_and_aspect_expansion():
    mask = Image.new("L", (100, 60))
    mask.paste(255, (10, 20, 30, 30))
    assert crop_region(mask) == (10, 20, 30, 30)
    box = crop_region(mask, 4)
    assert box == (6, 16, 34, 34)
    # 28×18 box for a square canvas: grow the height by int(28 − 18) = 10, split 5 above, 5 below.
    assert expand_crop_region(box, 64, 64, 100, 60) == (6, 11, 34, 39)
    # Near the bottom edge the grown box is shifted back inside the image.
    assert expand_crop_region((40, 50, 80, 60), 64, 64, 100, 60) == (40, 20, 80, 60)
    # A tall box for a wide canvas grows sideways.
    assert expand_crop_region((10, 10, 20, 50), 128, 64, 100, 60) == (0, 10, 80, 50)
    assert crop_region(Image.new("L", (8, 8))) is None
    assert crop_region(mask, 50) == (0, 0, 80, 60)


def two_colour(w=64, h=64) -> Image.Image:
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2] = (200, 30, 30)
    a[:, w // 2 :] = (30, 30, 200)
    return Image.fromarray(a)


def test_fill_takes_colours_from_the_surroundings_and_keeps_the_rest():
    image = two_colour()
    mask = Image.new("L", image.size)
    mask.paste(255, (6, 20, 22, 40))  # a hole in the red half
    out = arr(fill(image, mask))
    m = np.asarray(mask) > 0
    np.testing.assert_array_equal(out[~m], arr(image)[~m])
    hole = out[m]
    assert (hole[:, 0] > hole[:, 2] + 60).all()  # still red inside, blurred from around


def test_overlay_restores_pixels_outside_the_mask():
    original = noise_image(64, 64, 3)
    generated = noise_image(64, 64, 4)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (20, 20, 40, 40))
    out = arr(apply_overlay(generated, overlay_image(original, mask)))
    m = np.asarray(mask) > 0
    np.testing.assert_array_equal(out[~m], arr(original)[~m])
    np.testing.assert_array_equal(out[m], arr(generated)[m])


def test_overlay_with_paste_box_fits_the_result_into_the_crop():
    original = noise_image(100, 80, 5)
    mask = Image.new("L", original.size)
    mask.paste(255, (30, 20, 50, 40))
    generated = Image.new("RGB", (64, 64), (0, 255, 0))
    out = arr(apply_overlay(generated, overlay_image(original, mask), paste_to=(30, 20, 20, 20)))
    assert out.shape == (80, 100, 3)
    m = np.asarray(mask) > 0
    np.testing.assert_array_equal(out[~m], arr(original)[~m])
    assert (out[m] == (0, 255, 0)).all()


def test_resize_modes_are_checked():
    with pytest.raises(ValueError):
        resize_image(7, noise_image(8, 8), 8, 8)
    assert set(image_ops.RESIZE_MODES) == {0, 1, 2, 3}

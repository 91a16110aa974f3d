"""img2img colour correction (option `img2img_color_correction`): each NumPy step of engine/color_correction.py
against the library A1111 uses for it (OpenCV's 8-bit LAB, scikit-image's histogram matching, blendmodes 2022's
luminosity blend), and over REST: a result with the option on is A1111's correction, computed with those
libraries, of the same request's result with the option off."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
from blendmodes.blend import BlendType, blendLayers  # installed by the Makefile (see there)
from PIL import Image
from skimage import exposure

from engine.color_correction import (
    apply_color_correction,
    blend_luminosity,
    correction_target,
    lab_to_rgb,
    match_histograms,
    rgb_to_lab,
)
from tests.sdapi_server import png_b64


def blendmodes_2022_luminosity(background: Image.Image, foreground: Image.Image) -> Image.Image:
    return blendLayers(background, foreground, BlendType.LUMINOSITY)


def a1111_color_correction(init: np.ndarray, image: Image.Image) -> Image.Image:
    """A1111's setup_color_correction + apply_color_correction, with the libraries it calls."""
    target = cv2.cvtColor(np.asarray(init.copy()), cv2.COLOR_RGB2LAB)
    lab = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(lab, target, channel_axis=2)
    recoloured = Image.fromarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype("uint8"))
    return blendmodes_2022_luminosity(recoloured, image).convert("RGB")


def colours(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sample = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    edges = np.array([[r, g, b] for r in (0, 1, 254, 255) for g in (0, 1, 254, 255) for b in (0, 1, 254, 255)],
                     dtype=np.uint8)
    return np.concatenate([sample, grey, edges])[None]


@pytest.mark.slow
def test_rgb_to_lab_is_opencvs():
    # 2 M colours here; all 2^24 were checked the same way when this was written (0 differences either way).
    rgb = colours(2_000_000)
    assert np.array_equal(rgb_to_lab(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB))


@pytest.mark.slow
def test_lab_to_rgb_is_opencvs():
    lab = colours(2_000_000, seed=1)  # every byte triple is a valid 8-bit LAB input
    assert np.array_equal(lab_to_rgb(lab), cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


@pytest.mark.parametrize("shape, ref_shape, levels", [((64, 48), (64, 48), 256), ((40, 30), (77, 51), 256),
                                                      ((32, 32), (16, 64), 7), ((50, 20), (50, 20), 2)])
def test_match_histograms_is_scikit_images(shape, ref_shape, levels):
    rng = np.random.default_rng(levels)
    image = (rng.integers(0, levels, size=(*shape, 3)) * (255 // max(levels - 1, 1))).astype(np.uint8)
    reference = rng.normal(128, 40, size=(*ref_shape, 3)).clip(0, 255).astype(np.uint8)
    expected = exposure.match_histograms(image, reference, channel_axis=2)
    got = match_histograms(image, reference)
    assert got.dtype == expected.dtype == np.uint8 and np.array_equal(got, expected)


def test_blend_luminosity_is_blendmodes():
    rng = np.random.default_rng(5)
    # Saturated colours push the blend past both ends of [0, 1] (both corrections of blendmodes' loop).
    background = Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8))
    foreground = Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8))
    expected = np.asarray(blendmodes_2022_luminosity(background, foreground).convert("RGB"))
    assert np.array_equal(np.asarray(blend_luminosity(background, foreground)), expected)


def test_apply_color_correction_is_a1111s():
    rng = np.random.default_rng(9)
    init = np.asarray(Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8))
                      .resize((64, 48), Image.BICUBIC))
    result = Image.fromarray((np.asarray(init, dtype=np.float32) * 0.6 + 60).astype(np.uint8)[:, ::-1])
    got = apply_color_correction(correction_target(init), result)
    assert np.array_equal(np.asarray(got), np.asarray(a1111_color_correction(init, result)))
    assert not np.array_equal(np.asarray(got), np.asarray(result))  # it does change the colours


@pytest.fixture(scope="module")
def client(demo_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("cc")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json"))
    state.load_default()
    with TestClient(create_app(state)) as c:
        yield c
    state.close()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.slow
def test_img2img_with_color_correction_over_rest(client, batch_size):
    rng = np.random.default_rng(3)
    init = np.zeros((64, 64, 3), dtype=np.uint8)
    init[..., 0] = np.linspace(30, 220, 64, dtype=np.uint8)[None, :]
    init[..., 2] = rng.integers(100, 160, size=(64, 64), dtype=np.uint8)
    body = {"prompt": "a", "seed": 7, "steps": 3, "width": 64, "height": 64, "denoising_strength": 0.6,
            "batch_size": batch_size, "init_images": [png_b64(Image.fromarray(init))]}
    off = client.post("/sdapi/v1/img2img", json=body)
    on = client.post("/sdapi/v1/img2img", json={**body, "override_settings": {"img2img_color_correction": True}})
    assert off.status_code == on.status_code == 200, on.text
    off_images = [decode(b) for b in off.json()["images"]]
    on_images = [decode(b) for b in on.json()["images"]]
    assert len(on_images) == len(off_images) == batch_size
    for plain, corrected in zip(off_images, on_images, strict=True):
        # The init image is already 64×64: A1111's processed init image is the image itself.
        expected = a1111_color_correction(init, plain)
        assert np.array_equal(np.asarray(corrected), np.asarray(expected))
        assert not np.array_equal(np.asarray(corrected), np.asarray(plain))


@pytest.mark.slow
def test_inpainting_corrects_before_the_overlay(client):
    """A1111 corrects the generated image, then pastes the original back outside the mask: the kept part is the
    init image untouched, the repainted part is corrected."""
    rng = np.random.default_rng(4)
    init = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    body = {"prompt": "a", "seed": 11, "steps": 3, "width": 64, "height": 64, "denoising_strength": 0.7,
            "init_images": [png_b64(Image.fromarray(init))], "mask": png_b64(Image.fromarray(mask)),
            "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False}
    off = decode(client.post("/sdapi/v1/img2img", json=body).json()["images"][0])
    on = decode(client.post("/sdapi/v1/img2img", json={
        **body, "override_settings": {"img2img_color_correction": True}}).json()["images"][0])
    kept, repainted = np.s_[:, :32], np.s_[:, 32:]
    assert np.array_equal(np.asarray(on)[kept], init[kept])
    assert np.array_equal(np.asarray(off)[kept], init[kept])
    assert not np.array_equal(np.asarray(on)[repainted], np.asarray(off)[repainted])


@pytest.mark.slow
def test_full_mask_inpainting_is_corrected_against_the_init_image(client):
    rng = np.random.default_rng(6)
    init = np.asarray(Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
                      .resize((64, 64), Image.BICUBIC))
    body = {"prompt": "a", "seed": 12, "steps": 3, "width": 64, "height": 64, "denoising_strength": 0.7,
            "init_images": [png_b64(Image.fromarray(init))], "mask": png_b64(Image.new("L", (64, 64), 255)),
            "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False}
    off = decode(client.post("/sdapi/v1/img2img", json=body).json()["images"][0])
    on = decode(client.post("/sdapi/v1/img2img", json={
        **body, "override_settings": {"img2img_color_correction": True}}).json()["images"][0])
    # Everything is repainted (the overlay is transparent), so the result is A1111's correction of the plain one.
    assert np.array_equal(np.asarray(on), np.asarray(a1111_color_correction(init, off)))

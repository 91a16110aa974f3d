"""Inpainting with A1111's semantics (A1111 modules/processing.py: StableDiffusionProcessingImg2Img.init,
apply_color_correction, apply_overlay): masked content modes, "only masked" crops,
inverted masks, the latent blend at every step, the final overlay, and 9-channel inpainting models that the
exporter builds and the pipeline conditions (checked against diffusers/torch on the same weights)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from engine import image_ops
from engine.images import encode_images
from engine.img2img import inpainting_conditioning
from engine.plan import GenerationPlan, Img2ImgPlan, MaskPlan
from tests.images import b64, box_mask, noise_image

W = H = 64


def inpaint_plan(pipeline, image, mask_spec, strength=0.75, steps=4, seeds=(1,)) -> GenerationPlan:
    n = len(seeds)
    return GenerationPlan(
        prompts=("a red circle",) * n, negative_prompts=("",) * n, seeds=tuple(seeds), subseeds=tuple(seeds),
        width=W, height=H, steps=steps, cfg_scale=7.0, sampler="Euler", scheduler="automatic",
        batch_size=n, img2img=Img2ImgPlan((image,), strength, mask=mask_spec),
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def assert_only_mask_changed(original, result, keep, repaint):
    """Pixels in `keep` are the original's, exactly; pixels in `repaint` changed clearly."""
    out, ref = pixels(result), pixels(original)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out[keep], ref[keep])
    assert np.abs(out[repaint] - ref[repaint]).mean() > 8


@pytest.mark.parametrize("masked_content", ["fill", "original", "latent noise", "latent nothing"])
@pytest.mark.parametrize("only_masked", [False, True])
def test_pixels_outside_the_mask_are_kept(demo_pipeline, masked_content, only_masked):
    size = (96, 80) if only_masked else (W, H)  # "whole picture" keeps the canvas; the crop pastes back
    image = noise_image(*size, 1)
    mask = box_mask(size, (30, 20, 60, 50))
    spec = MaskPlan(mask, blur_x=0, blur_y=0, masked_content=masked_content, only_masked=only_masked)
    result = demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, spec))
    assert result.masked and (result.paste_to is not None) == only_masked
    inside = np.asarray(mask) > 0
    assert_only_mask_changed(image, result.images[0], ~inside, inside)


def test_inverted_mask_repaints_the_rest(demo_pipeline):
    image = noise_image(W, H, 2)
    mask = box_mask((W, H), (16, 16, 48, 48))
    spec = MaskPlan(mask, blur_x=0, blur_y=0, invert=True, only_masked=False)
    result = demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, spec))
    inside = np.asarray(mask) > 0
    assert_only_mask_changed(image, result.images[0], inside, ~inside)


def test_blurred_whole_picture_mask_keeps_what_the_doubled_blur_leaves_black(demo_pipeline):
    cv2 = pytest.importorskip("cv2")
    image = noise_image(W, H, 3)
    mask = box_mask((W, H), (20, 24, 44, 40))
    result = demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, MaskPlan(mask, only_masked=False)))
    blurred = cv2.GaussianBlur(np.asarray(mask), (21, 1), 4)
    blurred = cv2.GaussianBlur(blurred, (1, 21), 4)
    assert_only_mask_changed(image, result.images[0], blurred == 0, blurred >= 128)


def test_blank_only_masked_mask_is_plain_img2img(demo_pipeline):
    image = noise_image(W, H, 4)
    blank = demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, MaskPlan(Image.new("L", (W, H)))))
    plain = demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, None))
    assert not blank.masked and blank.paste_to is None
    np.testing.assert_array_equal(pixels(blank.images[0]), pixels(plain.images[0]))


def test_every_prediction_keeps_the_init_latent_outside_the_mask(demo_pipeline):
    image = noise_image(W, H, 5)
    mask = box_mask((W, H), (0, 0, 32, 64))  # left half: latent columns 0..3
    events = []
    spec = MaskPlan(mask, blur_x=0, blur_y=0, masked_content="original", only_masked=False)
    result = demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, spec, steps=5), on_step=events.append)
    init = encode_images(demo_pipeline.backend, demo_pipeline.manifest, image_ops.to_array([image]))
    assert len(events) == 4
    for event in events:  # the denoised prediction of each step
        np.testing.assert_allclose(event.latents[:, :, :, 4:], init[:, :, :, 4:], atol=1e-6)
        assert np.abs(event.latents[:, :, :, :4] - init[:, :, :, :4]).max() > 1e-2
    np.testing.assert_allclose(result.latents[0][:, :, 4:], init[0][:, :, 4:], atol=1e-6)


def test_latent_fill_modes_replace_the_masked_latent(demo_pipeline):
    image = noise_image(W, H, 6)
    mask = box_mask((W, H), (0, 0, 32, 64))
    first = {}
    for content in ("original", "latent nothing", "latent noise"):
        events = []
        spec = MaskPlan(mask, blur_x=0, blur_y=0, masked_content=content, only_masked=False)
        demo_pipeline.img2img(inpaint_plan(demo_pipeline, image, spec, strength=0.0, steps=3),
                              on_step=events.append)
        first[content] = events[0].latents
    # Every mode but "original" also pre-fills the masked pixels before encoding (masking.fill).
    filled = image_ops.to_array([image_ops.fill(image, mask)])
    init = encode_images(demo_pipeline.backend, demo_pipeline.manifest, filled)
    # With one step at the smallest σ the kept half is the init latent; the masked half starts from the fill.
    np.testing.assert_allclose(first["latent nothing"][:, :, :, 4:], init[:, :, :, 4:], atol=1e-6)
    assert np.abs(first["latent nothing"][:, :, :, :4]).max() < np.abs(first["original"][:, :, :, :4]).max()
    assert np.abs(first["latent noise"][:, :, :, :4] - first["original"][:, :, :, :4]).mean() > 0.1


# ---- 9-channel inpainting models -----------------------------------------------------------------------


@pytest.mark.slow
def test_inpainting_bundle_has_a_nine_channel_unet(demo_inpaint_bundle, inpaint_pipeline):
    manifest = json.loads((demo_inpaint_bundle / "manifest.json").read_text())
    assert manifest["unet_in_channels"] == 9 and inpaint_pipeline.manifest.is_inpainting
    assert inpaint_pipeline.unet.in_channels == 9
    with pytest.raises(ValueError, match="9 input channels"):
        inpaint_pipeline.unet(np.zeros((1, 4, 8, 8), np.float32), 500.0, np.zeros((1, 77, 32), np.float32))


def test_unet_with_image_cond_matches_torch(inpaint_pipeline, inpaint_torch):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 6)).astype(np.float32)
    cond = rng.standard_normal((2, 5, 8, 6)).astype(np.float32)
    context = rng.standard_normal((2, 77, 32)).astype(np.float32)
    ours = inpaint_pipeline.unet(x, 321.5, context, image_cond=cond)
    with torch.no_grad():
        expected = inpaint_torch.unet(torch.from_numpy(np.concatenate([x, cond], axis=1)),
                                      torch.tensor([321.5, 321.5]), torch.from_numpy(context)).sample.numpy()
    np.testing.assert_allclose(ours, expected, atol=2e-5 * np.abs(expected).max())


def test_inpainting_conditioning_matches_torch(inpaint_pipeline, inpaint_torch):
    import torch

    image = image_ops.to_array([noise_image(W, H, 7)])
    mask = box_mask((W, H), (10, 13, 37, 50))
    ours = inpainting_conditioning(lambda im: encode_images(inpaint_pipeline.backend, inpaint_pipeline.manifest, im),
                                   image, mask, (8, 8))
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None].round()
    masked = torch.from_numpy(image * 2 - 1) * (1 - m)
    with torch.no_grad():
        latent = inpaint_torch.vae.encode(masked).latent_dist.mean * inpaint_torch.vae.config.scaling_factor
    expected = torch.cat([torch.nn.functional.interpolate(m, size=(8, 8)), latent], dim=1).numpy()
    np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_inpainting_model_inpaints_and_generates(inpaint_pipeline):
    from tests.engine.test_engine_smoke import make_plan

    image = noise_image(W, H, 8)
    mask = box_mask((W, H), (16, 16, 48, 40))
    spec = MaskPlan(mask, blur_x=0, blur_y=0, only_masked=False)
    result = inpaint_pipeline.img2img(inpaint_plan(inpaint_pipeline, image, spec))
    assert result.is_using_inpainting_conditioning
    inside = np.asarray(mask) > 0
    assert_only_mask_changed(image, result.images[0], ~inside, inside)
    generated = inpaint_pipeline.txt2img(make_plan(inpaint_pipeline, steps=3))
    assert generated.images[0].size == (64, 64) and np.isfinite(generated.latents[0]).all()


# ---- the REST endpoint ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_inpaint_request_and_infotext(demo_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from service.a1111.infotext import parse_infotext
    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp_path / "m", options_file=tmp_path / "o.json"))
    image = noise_image(96, 80, 9)
    rgba = np.zeros((80, 96, 4), dtype=np.uint8)
    rgba[20:50, 30:60, 3] = 255  # an alpha mask: opaque where to repaint
    body = {"init_images": [b64(image)], "mask": b64(Image.fromarray(rgba, "RGBA")), "prompt": "a hat",
            "steps": 4, "width": 64, "height": 64, "seed": 42, "denoising_strength": 0.6, "mask_blur": 0}
    with TestClient(create_app(state)) as client:
        r = client.post("/sdapi/v1/img2img", json=body)
        assert r.status_code == 200, r.text
        out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert out.size == (96, 80)  # only masked (the API default): pasted back into the original
        keep = np.ones((80, 96), bool)
        keep[20:50, 30:60] = False
        assert_only_mask_changed(image, out, keep, ~keep)
        parsed = parse_infotext(out.info["parameters"])
        assert parsed["Denoising strength"] == "0.6" and parsed["Inpaint area"] == "Only masked"
        assert parsed["Masked area padding"] == "0" and parsed["Masked content"] == "fill"
        assert "Mask blur" not in parsed
        r = client.post("/sdapi/v1/img2img", json={**body, "inpaint_full_res": False, "inpainting_fill": 1,
                                                   "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None,
                                                   "inpainting_mask_invert": 1})
        assert r.status_code == 200, r.text
        infotext = json.loads(r.json()["info"])["infotexts"][0]
        assert "Denoising strength: 0.6, Mask mode: Inpaint not masked, Mask blur: 4, Version" in infotext
    state.close()

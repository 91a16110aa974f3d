"""A1111's inpainting options: `inpainting_mask_weight` (A1111 modules/processing.py:
StableDiffusionProcessing.img2img_image_conditioning, StableDiffusionProcessingTxt2Img.sample_hr_pass; the
masked-image
latent checked against the torch VAE of the same weights) and `return_mask` / `return_mask_composite`
(A1111 modules/processing.py: process_images_inner: mask and masked composite appended after each inpainted
image), over the engine and REST."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from engine import image_ops
from engine.plan import GenerationPlan, Img2ImgPlan, MaskPlan
from tests.images import b64, box_mask, noise_image

W = H = 64


class RecordingBackend:
    """Keeps a copy of every input the wrapped backend is given, per component, in call order."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: dict[str, list[dict[str, np.ndarray]]] = {}

    def run(self, component, inputs):
        self.calls.setdefault(component, []).append({k: np.array(v) for k, v in inputs.items()})
        return self.backend.run(component, inputs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.fixture
def recorder(inpaint_pipeline, monkeypatch) -> RecordingBackend:
    """Records the VAE and UNet inputs of `inpaint_pipeline` for one test."""
    recording = RecordingBackend(inpaint_pipeline.backend)
    monkeypatch.setattr(inpaint_pipeline, "backend", recording)
    monkeypatch.setattr(inpaint_pipeline.unet, "backend", recording)
    return recording


def image_conds(recorder: RecordingBackend, latent_side: int) -> list[np.ndarray]:
    """The image_cond channels (mask, masked-image latent) of every UNet call at that latent size."""
    return [c["sample"][:, 4:] for c in recorder.calls["unet"] if c["sample"].shape[-1] == latent_side]


def torch_latent_mean(torch_pipe, pixels_pm1):
    """The torch VAE's posterior mean, scaled, for images in [−1, 1]."""
    import torch

    with torch.no_grad():
        return (torch_pipe.vae.encode(pixels_pm1).latent_dist.mean * torch_pipe.vae.config.scaling_factor).numpy()


# ---- inpainting_mask_weight in img2img ---------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.0])
@pytest.mark.slow
def test_mask_weight_conditions_the_unet_on_the_lerped_image(inpaint_pipeline, inpaint_torch, recorder, weight):
    import torch

    image = noise_image(W, H, 11)
    mask = box_mask((W, H), (12, 20, 44, 52))
    # "original" content: the conditioning image is the init image itself, no fill.
    spec = MaskPlan(mask, blur_x=0, blur_y=0, masked_content="original", only_masked=False)
    plan = GenerationPlan(
        prompts=("a hat",), negative_prompts=("",), seeds=(3,), subseeds=(3,), width=W, height=H, steps=2,
        cfg_scale=7.0, sampler="Euler", scheduler="automatic",
        img2img=Img2ImgPlan((image,), 0.5, mask=spec), inpainting_mask_weight=weight,
    )
    inpaint_pipeline.img2img(plan)
    conds = image_conds(recorder, W // 8)
    assert conds  # every step's UNet batch (cond and uncond rows) carries the same conditioning
    for cond in conds:
        for row in cond:
            np.testing.assert_array_equal(row, conds[0][0])
    ours = conds[0][:1]

    img = torch.from_numpy(image_ops.to_array([image]) * 2 - 1)
    m = (torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]).round()
    expected_latent = torch_latent_mean(inpaint_torch, torch.lerp(img, img * (1 - m), weight))
    expected_mask = torch.nn.functional.interpolate(m, size=(H // 8, W // 8)).numpy()
    np.testing.assert_array_equal(ours[:, :1], expected_mask)
    np.testing.assert_allclose(ours[:, 1:], expected_latent, atol=1e-5)

    if weight == 1.0:  # diffusers' inpainting pipeline masks its image the same way
        init = inpaint_torch.image_processor.preprocess(image, height=H, width=W)
        condition = inpaint_torch.mask_processor.preprocess(mask, height=H, width=W)
        diffusers_masked = init * (condition < 0.5)
        np.testing.assert_allclose(ours[:, 1:], torch_latent_mean(inpaint_torch, diffusers_masked), atol=1e-5)
    if weight == 0.0:  # the unmasked image's latent
        np.testing.assert_allclose(ours[:, 1:], torch_latent_mean(inpaint_torch, img), atol=1e-5)
    else:
        assert np.abs(ours[:, 1:] - torch_latent_mean(inpaint_torch, img)).max() > 1e-2


# ---- inpainting_mask_weight in txt2img's hires pass (A1111 modules/processing.py: StableDiffusionProcessingTxt2Img.sample_hr_pass) -----------------------------------------


def hires_plan(pipeline, upscaler: str, weight: float, seed: int = 5) -> GenerationPlan:
    from service.a1111.sdapi_models import Txt2ImgRequest
    from service.a1111.translate import plan_txt2img

    req = Txt2ImgRequest(prompt="a hat", steps=2, width=W, height=H, seed=seed, enable_hr=True, hr_scale=1.5,
                         hr_upscaler=upscaler, denoising_strength=0.5, hr_second_pass_steps=1)
    plan = plan_txt2img(req, {"inpainting_mask_weight": weight})
    assert plan.inpainting_mask_weight == weight  # read from the options into the plan
    return plan


def test_hires_latent_upscale_with_mask_weight_below_one_conditions_on_the_decoded_latent(
        inpaint_pipeline, inpaint_torch, recorder):
    import torch

    weight, seed, side = 0.25, 5, 96 // 8
    inpaint_pipeline.txt2img(hires_plan(inpaint_pipeline, "Latent", weight, seed))
    # A1111 decodes the upscaled latent (no clamp), lerps it towards 0 under an all-ones mask, and encodes that
    # with the posterior sampled from torch's CPU generator seeded with the batch's last seed, whose first
    # draw went to the first pass's conditioning.
    upscaled = recorder.calls["vae_decoder"][0]["latent_sample"]
    assert upscaled.shape[-1] == side  # the first decode is the hires one; the final decode comes after
    generator = torch.Generator().manual_seed(seed)
    torch.randn((1, 4, H // 8, W // 8), generator=generator)
    with torch.no_grad():
        decoded = inpaint_torch.vae.decode(torch.from_numpy(upscaled)).sample
        masked = torch.lerp(decoded, decoded * 0, weight)
        dist = inpaint_torch.vae.encode(masked).latent_dist
        expected = (dist.sample(generator=generator) * inpaint_torch.vae.config.scaling_factor).numpy()
    cond = image_conds(recorder, side)[0][:1]
    np.testing.assert_array_equal(cond[:, :1], np.ones((1, 1, side, side), np.float32))
    np.testing.assert_allclose(cond[:, 1:], expected, atol=1e-4 * np.abs(expected).max())


def test_hires_latent_upscale_at_weight_one_keeps_the_txt2img_conditioning(inpaint_pipeline, recorder):
    inpaint_pipeline.txt2img(hires_plan(inpaint_pipeline, "Latent", 1.0))
    assert len(recorder.calls["vae_decoder"]) == 1  # only the final decode
    grey = [c["sample"] for c in recorder.calls["vae_encoder"]]
    assert len(grey) == 2 and all(np.all(s == 0) for s in grey)  # mid-grey at both sizes


def test_hires_image_upscaler_lerps_the_zero_to_one_batch(inpaint_pipeline, recorder):
    weight = 0.4
    inpaint_pipeline.txt2img(hires_plan(inpaint_pipeline, "Lanczos", weight))
    first, cond = [c["sample"] for c in recorder.calls["vae_encoder"] if c["sample"].shape[-1] == 96]
    # The upscaled batch p ∈ [0, 1] is encoded as 2p − 1; A1111 hands the conditioning p itself, so the masked
    # image is lerp(p, 0, w) = (1 − w)·p (A1111 modules/processing.py:
    # StableDiffusionProcessingTxt2Img.sample_hr_pass).
    pixels = (first + 1) / 2
    np.testing.assert_allclose(cond, (1 - weight) * pixels, atol=1e-6)


# ---- the images return_mask / return_mask_composite are made from -----------------------------------------


@pytest.mark.parametrize("only_masked", [False, True])
def test_composite_is_made_from_the_result_before_the_overlay(inpaint_pipeline, only_masked):
    from engine.img2img import mask_composite

    size = (96, 80) if only_masked else (W, H)
    image, mask = noise_image(*size, 16), box_mask(size, (30, 20, 60, 50))
    spec = MaskPlan(mask, blur_x=4, blur_y=4, only_masked=only_masked)
    plan = GenerationPlan(
        prompts=("a hat",), negative_prompts=("",), seeds=(3,), subseeds=(3,), width=W, height=H, steps=2,
        cfg_scale=7.0, sampler="Euler", scheduler="automatic",
        img2img=Img2ImgPlan((image,), 0.75, mask=spec),
    )
    result = inpaint_pipeline.img2img(plan)
    raw = inpaint_pipeline._decode(np.stack(result.latents))[0]
    m = blurred(mask, 4)
    if only_masked:  # A1111 pastes the W×H result into its box on a transparent canvas of the original's size
        x, y, w, h = result.paste_to
        np.testing.assert_array_equal(np.asarray(result.mask_for_overlay), m)
        canvas = np.asarray(result.denoised[0])
        assert canvas.shape == (80, 96, 4) and canvas[..., 3].sum() == 255 * w * h
        inner = image_ops.resize_image(image_ops.CROP_AND_RESIZE, raw, w, h)
        np.testing.assert_array_equal(canvas[y:y + h, x:x + w, :3], np.asarray(inner))
    else:
        m = np.clip(m.astype(np.float32) * 2, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(result.mask_for_overlay), m)
        np.testing.assert_array_equal(np.asarray(result.denoised[0]), np.asarray(raw))
    composite = np.asarray(mask_composite(result.denoised[0], result.mask_for_overlay)).astype(np.int16)
    denoised = np.asarray(result.denoised[0].convert("RGB")).astype(np.int16)
    final = np.asarray(result.images[0]).astype(np.int16)
    np.testing.assert_array_equal(composite[..., 3], m)
    # Premultiplied compositing loses precision at low alpha; where the mask is at least half on, the colours are
    # the denoised result's, not the overlaid image's (which mixes in the original there).
    half = (m >= 128) & (m < 255)
    assert half.any()
    assert np.abs(composite[..., :3][half] - denoised[half]).max() <= 2
    assert np.abs(final[half] - denoised[half]).max() > 10


# ---- REST: the options, the infotext and the returned mask images -------------------------------------------


@pytest.fixture(scope="module")
def api(demo_inpaint_bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("inpaint-options")
    state = ServerState(ServerConfig(model=demo_inpaint_bundle, models_dir=tmp / "models",
                                     options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client
    state.close()


def decode(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def blurred(mask: Image.Image, sigma: int) -> np.ndarray:
    """A1111's mask blur with OpenCV itself: horizontal, then vertical Gaussian (A1111 modules/processing.py:
    StableDiffusionProcessingImg2Img.init)."""
    import cv2

    k = 2 * int(2.5 * sigma + 0.5) + 1
    out = cv2.GaussianBlur(np.asarray(mask), (k, 1), sigma)
    return cv2.GaussianBlur(out, (1, k), sigma)


def inpaint_body(image: Image.Image, mask: Image.Image, **fields) -> dict:
    return {"init_images": [b64(image)], "mask": b64(mask), "prompt": "a hat", "steps": 2, "width": W,
            "height": H, "seed": 42, "denoising_strength": 0.6, "mask_blur": 4, **fields}


BOTH = {"return_mask": True, "return_mask_composite": True}


@pytest.mark.slow
def test_whole_picture_returns_image_mask_composite_per_image(api):
    image, mask = noise_image(W, H, 12), box_mask((W, H), (16, 8, 40, 48))
    body = inpaint_body(image, mask, inpaint_full_res=False, batch_size=2, override_settings=BOTH)
    r = api.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    images = [decode(s) for s in r.json()["images"]]
    assert len(images) == 6 and len(info["infotexts"]) == 2 and info["index_of_first_image"] == 0
    expected_mask = np.clip(blurred(mask, 4).astype(np.float32) * 2, 0, 255).astype(np.uint8)  # doubled
    for k in range(2):
        result, mask_image, composite = images[3 * k: 3 * k + 3]
        assert result.info["parameters"] == info["infotexts"][k]
        assert "parameters" not in mask_image.info and "parameters" not in composite.info
        assert mask_image.mode == "RGB" and composite.mode == "RGBA" and composite.size == result.size
        for channel in np.moveaxis(np.asarray(mask_image), -1, 0):
            np.testing.assert_array_equal(channel, expected_mask)
        rgba = np.asarray(composite)
        np.testing.assert_array_equal(rgba[..., 3], expected_mask)
        # Where the doubled mask is full the overlay hides nothing: the composite shows the result itself.
        full = expected_mask == 255
        np.testing.assert_array_equal(rgba[..., :3][full], np.asarray(result)[full])
        assert np.all(rgba[..., :3][expected_mask == 0] == 0)


@pytest.mark.slow
def test_only_masked_mask_is_the_blurred_original_size_mask(api):
    image, mask = noise_image(96, 80, 13), box_mask((96, 80), (30, 20, 60, 50))
    r = api.post("/sdapi/v1/img2img", json=inpaint_body(image, mask, override_settings={"return_mask": True}))
    assert r.status_code == 200, r.text
    result, mask_image = (decode(s) for s in r.json()["images"])
    assert result.size == mask_image.size == (96, 80)
    np.testing.assert_array_equal(np.asarray(mask_image.convert("L")), blurred(mask, 4))  # not doubled

    r = api.post("/sdapi/v1/img2img",
                 json=inpaint_body(image, mask, override_settings={"return_mask_composite": True}))
    assert r.status_code == 200, r.text
    result, composite = (decode(s) for s in r.json()["images"])
    assert composite.size == (96, 80)
    np.testing.assert_array_equal(np.asarray(composite)[..., 3], blurred(mask, 4))


@pytest.mark.slow
def test_no_mask_images_without_a_mask_or_when_off(api):
    image, mask = noise_image(W, H, 14), box_mask((W, H), (16, 8, 40, 48))
    plain = {k: v for k, v in inpaint_body(image, mask).items() if k != "mask"}
    r = api.post("/sdapi/v1/img2img", json={**plain, "batch_size": 2, "override_settings": BOTH})
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "a hat", "steps": 2, "width": W, "height": H,
                                            "n_iter": 2, "override_settings": BOTH})
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2
    r = api.post("/sdapi/v1/img2img", json=inpaint_body(image, mask, inpaint_full_res=False))
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1  # the options default to off


@pytest.mark.slow
def test_mask_weight_option_reaches_the_infotext(api):
    image, mask = noise_image(W, H, 15), box_mask((W, H), (16, 8, 40, 48))
    for overrides, written in (({}, "1.0"), ({"inpainting_mask_weight": 0.5}, "0.5"),
                               ({"inpainting_mask_weight": 0}, "0.0")):
        r = api.post("/sdapi/v1/img2img", json=inpaint_body(image, mask, override_settings=overrides))
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["is_using_inpainting_conditioning"] is True
        assert f"Conditional mask weight: {written}, " in info["infotexts"][0]
    # txt2img with an inpainting model writes it too (A1111 writes it whenever the conditioning is in use).
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "a hat", "steps": 2, "width": W, "height": H,
                                            "override_settings": {"inpainting_mask_weight": 0.25}})
    assert r.status_code == 200, r.text
    assert "Conditional mask weight: 0.25, " in json.loads(r.json()["info"])["infotexts"][0]
    r = api.post("/sdapi/v1/img2img", json=inpaint_body(image, mask, override_settings={
        "inpainting_mask_weight": 1.5}))
    assert r.status_code == 422 and "inpainting_mask_weight" in r.json()["detail"]
    assert api.get("/sdapi/v1/options").json()["inpainting_mask_weight"] == 1.0

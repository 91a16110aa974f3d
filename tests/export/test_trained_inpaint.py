"""The trained inpainting variant of the shapes model, through the sdapi REST surface: it paints what the prompt
asks into the masked half and leaves the rest alone, and still follows the colour in txt2img (where A1111
conditions it on a fully masked mid-grey image). The random-weight demo inpainting model is the control: it
does not do this, so these tests can tell a working inpainting path from a broken one.
"""

from __future__ import annotations

import base64
import io
import random

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from export.synthetic_shapes import Scene, render
from tests.export.test_trained_model import colour_masks, dominant_colour
from tests.images import b64, box_mask

SIZE = 64
SEED = 100  # a batch of 10: seeds 100..109
BATCH = 10


def _client(bundle, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("inpaint-api")
    state = ServerState(ServerConfig(model=bundle, models_dir=tmp / "models", options_file=tmp / "o.json"))
    return state, TestClient(create_app(state))


@pytest.fixture(scope="module")
def trained(shapes_inpaint_bundle, tmp_path_factory):
    state, client = _client(shapes_inpaint_bundle, tmp_path_factory)
    with client:
        yield client
    state.close()


@pytest.fixture(scope="module")
def random_weights(demo_inpaint_bundle, tmp_path_factory):
    state, client = _client(demo_inpaint_bundle, tmp_path_factory)
    with client:
        yield client
    state.close()


def scene(shape: str = "square", colour: str = "blue") -> Image.Image:
    """'a blue square on the left, white background' (or another shape there), drawn by the training data's own
    generator; small, so it stays in the left half."""
    return render(Scene(shape, colour, "white", "left", "small", ""), SIZE, random.Random(0))


def decode(response) -> list[Image.Image]:
    assert response.status_code == 200, response.text
    return [Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in response.json()["images"]]


def inpaint_right_half(client, prompt: str, original: Image.Image | None = None,
                       **extra) -> tuple[Image.Image, list[Image.Image]]:
    original = scene() if original is None else original
    body = {
        "init_images": [b64(original)], "mask": b64(box_mask((SIZE, SIZE), (SIZE // 2, 0, SIZE, SIZE))),
        "prompt": prompt, "seed": SEED, "batch_size": BATCH, "steps": 20, "cfg_scale": 7.0,
        "sampler_name": "Euler a", "width": SIZE, "height": SIZE, "denoising_strength": 1.0,
        "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False, **extra,
    }
    return original, decode(client.post("/sdapi/v1/img2img", json=body))


def right_half_colours(images: list[Image.Image]) -> list[str | None]:
    """The dominant colour of each right half, if it forms a shape: random weights also scatter vivid pixels of
    every hue over 10–20 % of the half, so a connected region of ≥ 250 px (12 %) is asked for too."""
    found = []
    for image in images:
        half = image.crop((SIZE // 2, 0, SIZE, SIZE))
        colour = dominant_colour(half)
        if colour is not None:
            labels, n = ndimage.label(colour_masks(half)[colour])
            colour = colour if n and np.bincount(labels.ravel())[1:].max() >= 250 else None
        found.append(colour)
    return found


def test_scene_is_what_the_prompt_says():
    original = scene()
    assert dominant_colour(original.crop((0, 0, SIZE // 2, SIZE))) == "blue"
    assert dominant_colour(original.crop((SIZE // 2, 0, SIZE, SIZE))) is None  # white only


KNOWN_MISS = pytest.mark.xfail(strict=True, reason=(
    "measured 0/10 (30 seeds: 0/30): with the blue square kept, a red shape comes out blue; the colour of a kept "
    "blue or green shape leaks into red (not into green, purple, yellow), see export/weights/shapes-sd-inpaint"))


@pytest.mark.parametrize("prompt,colour,kept", [
    ("a green triangle on the right", "green", ("square", "blue")),
    ("a red circle on the right", "red", ("circle", "yellow")),
    pytest.param("a red circle on the right", "red", ("square", "blue"), marks=KNOWN_MISS),
])
@pytest.mark.slow
def test_trained_model_paints_the_prompt_into_the_mask(trained, prompt, colour, kept):
    original, images = inpaint_right_half(trained, prompt, scene(*kept))
    found = right_half_colours(images)
    assert sum(f == colour for f in found) >= 8, found
    left = np.asarray(original)[:, : SIZE // 2]
    for image in images:  # the overlay puts the unmasked half back exactly
        assert np.array_equal(np.asarray(image)[:, : SIZE // 2], left)


@pytest.mark.parametrize("prompt,colour,kept", [("a green triangle on the right", "green", ("square", "blue")),
                                                ("a red circle on the right", "red", ("circle", "yellow"))])
@pytest.mark.slow
def test_random_weight_inpainting_model_does_not(random_weights, prompt, colour, kept):
    """Control: the same requests on the random-weight 9-channel model keep the left half (the overlay) but do
    not paint the asked colour, so the test above measures the trained weights, not the plumbing."""
    original, images = inpaint_right_half(random_weights, prompt, scene(*kept))
    found = right_half_colours(images)
    assert sum(f == colour for f in found) < 8, found
    assert all(np.array_equal(np.asarray(im)[:, : SIZE // 2], np.asarray(original)[:, : SIZE // 2])
               for im in images)


@pytest.mark.slow
def test_txt2img_with_the_inpainting_model_follows_the_colour(trained):
    found = {}
    for prompt, colour in [("a red circle", "red"), ("a blue square", "blue")]:
        body = {"prompt": prompt, "seed": SEED, "batch_size": BATCH, "steps": 20, "cfg_scale": 7.0,
                "sampler_name": "Euler a", "width": SIZE, "height": SIZE}
        found[colour] = [dominant_colour(image) for image in decode(trained.post("/sdapi/v1/txt2img", json=body))]
    assert all(sum(f == colour for f in hits) >= 7 for colour, hits in found.items()), found

"""The `tiling` request field and option (A1111 modules/processing.py: `p.tiling`, None → option tiling):
interpreted once into the plan, written as `Tiling: True`, pasted back into the option; through the API the
tiled image differs and untiled ones stay as they were."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from service.a1111.infotext import create_infotext, generation_parameters
from service.a1111.infotext_request import apply_infotext
from service.a1111.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from service.a1111.translate import plan_img2img, plan_txt2img
from service.runtime.options import DEFAULTS

SMALL = dict(prompt="a red circle", steps=3, width=64, height=64, seed=5)


@pytest.mark.parametrize("field,option,expected", [(None, False, False), (None, True, True), (True, False, True),
                                                   (False, True, False)])
def test_tiling_is_the_field_else_the_option(field, option, expected):
    options = dict(DEFAULTS, tiling=option)
    assert plan_txt2img(Txt2ImgRequest(**SMALL, tiling=field), options).tiling is expected
    image = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert plan_img2img(Img2ImgRequest(**SMALL, tiling=field, init_images=[image]), options).tiling is expected


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    return buffer.getvalue()


def test_infotext_says_tiling_only_when_tiled():
    tiled = plan_txt2img(Txt2ImgRequest(**SMALL, tiling=True), DEFAULTS)
    plain = plan_txt2img(Txt2ImgRequest(**SMALL), DEFAULTS)
    params = generation_parameters(tiled, 0, "m", "h")
    assert params["Tiling"] is True
    # A1111's slot: after RNG, before the extra parameters and Version.
    keys = list(params)
    assert keys.index("Seed") < keys.index("Size") < keys.index("Tiling") < keys.index("Version")
    assert ", Tiling: True, " in create_infotext("a", "", params)
    assert "Tiling" not in create_infotext("a", "", generation_parameters(plain, 0, "m", "h"))


def test_pasted_tiling_sets_the_option():
    req = Txt2ImgRequest(**SMALL, infotext="a red circle\nSteps: 3, Sampler: Euler, Seed: 5, Tiling: True")
    pasted = apply_infotext(req, DEFAULTS)
    assert pasted.override_settings == {"tiling": True}


def _generate(api, **fields) -> tuple[bytes, dict]:
    response = api.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler", **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return base64.b64decode(body["images"][0]), json.loads(body["info"])


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_api_tiling_field_and_option(api):
    plain, plain_info = _generate(api)
    tiled, info = _generate(api, tiling=True)
    by_option, option_info = _generate(api, override_settings={"tiling": True})
    again, _ = _generate(api)
    assert again == plain  # an untiled request after tiled ones: byte for byte the same PNG
    assert np.abs(_pixels(tiled) - _pixels(plain)).max() > 10
    assert (_pixels(by_option) == _pixels(tiled)).all()
    assert "Tiling: True" in info["infotexts"][0] and "Tiling: True" in option_info["infotexts"][0]
    assert "Tiling" not in plain_info["infotexts"][0]

"""Infotext written and parsed as A1111 writes and parses it: the literal examples of A1111
modules/processing.py: create_infotext and
the parser rules of A1111 modules/infotext_utils.py: parse_generation_parameters (expected values written from
the spec, not taken from our output), plus png-info's
reading of image metadata (A1111 modules/images.py: read_info_from_image)."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from service.a1111.image_metadata import read_info_from_image, user_comment
from service.a1111.infotext import create_infotext, generation_parameters, parse_infotext
from service.a1111.sdapi_models import Txt2ImgRequest
from service.a1111.translate import plan_txt2img
from service.runtime.options import DEFAULTS
from tests.infotext_examples import EXAMPLE_2

EXAMPLE_1 = (
    "a photo of a cat\n"
    "Negative prompt: blurry\n"
    "Steps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


# A1111 modules/infotext_utils.py: parse_generation_parameters, in A1111's order.
DEFAULTS_AFTER_PROMPT = [
    ("Hires resize-1", 0), ("Hires resize-2", 0), ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"), ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""), ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"), ("Inpaint area", "Whole picture"), ("Masked area padding", 32),
    ("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0), ("Schedule min sigma", 0),
    ("Schedule rho", 0), ("VAE Encoder", "Full"), ("VAE Decoder", "Full"), ("FP8 weight", "Disable"),
    ("Refiner switch by sampling steps", False),
]


def test_example_1_from_an_api_request():
    req = Txt2ImgRequest(prompt="a photo of a cat", negative_prompt="blurry", seed=1234)
    plan = plan_txt2img(req, DEFAULTS)
    params = generation_parameters(plan, 0, "v1-5-pruned-emaonly", "6ce0161689")
    assert create_infotext(plan.prompts[0], plan.negative_prompts[0], params) == EXAMPLE_1


def test_example_2_layout():
    params = {
        "Steps": 25, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5, "Image CFG scale": None,
        "Seed": 1000, "Face restoration": None, "Size": "512x768", "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly", "VAE hash": "735e4c3a44", "VAE": "vae-ft-mse-840000-ema-pruned.safetensors",
        "Variation seed": 2000, "Variation seed strength": 0.3, "Denoising strength": 0.45, "Clip skip": 2,
        "Hires upscale": 2.0, "Hires steps": 10, "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6bad76eb54", "TI hashes": "easynegative: c74b4e810b03", "Version": "v1.10.1",
    }
    assert create_infotext("1girl, <lora:add_detail:0.8>", "easynegative", params) == EXAMPLE_2


def test_quoting_and_bare_keys():
    params = {"A": "x, y", "B": "line\nbreak", "C": "ünïcode: kept", "Tiling": "Tiling", "D": None, "E": True}
    text = create_infotext("p", "", params)
    assert text == 'p\nA: "x, y", B: "line\\nbreak", C: "ünïcode: kept", Tiling, E: True'


def test_parse_example_2():
    parsed = parse_infotext(EXAMPLE_2)
    expected = [
        ("Steps", "25"), ("Sampler", "DPM++ 2M"), ("Schedule type", "Karras"), ("CFG scale", "6.5"),
        ("Seed", "1000"), ("Size-1", "512"), ("Size-2", "768"), ("Model hash", "6ce0161689"),
        ("Model", "v1-5-pruned-emaonly"), ("VAE hash", "735e4c3a44"),
        ("VAE", "vae-ft-mse-840000-ema-pruned.safetensors"), ("Variation seed", "2000"),
        ("Variation seed strength", "0.3"), ("Denoising strength", "0.45"), ("Clip skip", "2"),
        ("Hires upscale", "2.0"), ("Hires steps", "10"), ("Hires upscaler", "R-ESRGAN 4x+"),
        ("Lora hashes", "add_detail: 7c6bad76eb54"), ("TI hashes", "easynegative: c74b4e810b03"),
        ("Version", "v1.10.1"), ("Prompt", "1girl, <lora:add_detail:0.8>"), ("Negative prompt", "easynegative"),
    ] + [kv for kv in DEFAULTS_AFTER_PROMPT if kv[0] != "Schedule type"]
    assert list(parsed.items()) == expected


def test_parse_empty_text_gives_the_defaults():
    assert list(parse_infotext("").items()) == [("Prompt", ""), ("Negative prompt", ""), ("Clip skip", "1")] + \
        DEFAULTS_AFTER_PROMPT


def test_parse_rules():
    # Fewer than 3 pairs: the last line is prompt text. A multi-line negative prompt.
    short = parse_infotext("a cat\nSteps: 20, Seed: 1")
    assert short["Prompt"] == "a cat\nSteps: 20, Seed: 1" and "Steps" not in short
    multi = parse_infotext("p1\np2\nNegative prompt: n1\nn2\nSteps: 1, Sampler: Euler, Seed: 7")
    assert (multi["Prompt"], multi["Negative prompt"], multi["Seed"]) == ("p1\np2", "n1\nn2", "7")
    # An empty value fails A1111's `v[0]` and the entry is skipped.
    empty = parse_infotext("p\nSteps: 20, Empty: , Sampler: Euler, Seed: 1")
    assert "Empty" not in empty and empty["Sampler"] == "Euler"
    # Hypernet tag appended to the prompt; emphasis detected by the attention parser, escapes are not emphasis.
    hyper = parse_infotext("(a cat)\nSteps: 1, Sampler: Euler, Hypernet: anime, Hypernet strength: 0.5")
    assert hyper["Prompt"] == "(a cat)<hypernet:anime:0.5>" and hyper["Emphasis"] == "Original"
    assert "Emphasis" not in parse_infotext("\\(a cat\\)\nSteps: 1, Sampler: Euler, Seed: 1")
    assert "Emphasis" not in parse_infotext("(a cat:1.0) BREAK b\nSteps: 1, Sampler: Euler, Seed: 1")


def test_parse_old_first_pass_size():
    parsed = parse_infotext("p\nSteps: 20, Sampler: Euler, Size: 1024x768, First pass size: 0x0")
    # old_hires_fix_first_pass_dimensions: scale = √(512²/(1024·768)), sides ceil(scale·side/64)·64.
    assert (parsed["Size-1"], parsed["Size-2"]) == (640, 448)  # ceil(9.24)·64, ceil(6.93)·64
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (1024, 768)
    given = parse_infotext("p\nSteps: 20, Sampler: Euler, Size: 1024x1024, First pass size: 512x384")
    assert (given["Size-1"], given["Size-2"], given["Hires resize-1"]) == (512, 384, 1024)


def test_parse_version_backcompat():
    old = parse_infotext("[a:b:3]\nSteps: 20, Sampler: DDIM, Version: v1.5.2")
    assert old["Old prompt editing timelines"] is True and old["Pad conds v0"] is True
    assert old["Downcast alphas_cumprod"] is True
    tsnr = parse_infotext("a\nSteps: 20, Sampler: Euler, Version: v1.7.0-225-g1234567")
    assert "Downcast alphas_cumprod" not in tsnr
    before = parse_infotext("a\nSteps: 20, Sampler: Euler, Version: v1.7.0-224-g1234567")
    assert before["Downcast alphas_cumprod"] is True
    assert "Downcast alphas_cumprod" not in parse_infotext("a\nSteps: 20, Sampler: Euler, Version: garbage")
    skipped = parse_infotext(EXAMPLE_2, options={"infotext_skip_pasting": ["Seed", "VAE"]})
    assert "Seed" not in skipped and "VAE" not in skipped and "Model" in skipped


def test_parse_styles_array():
    def extract(prompt, negative):
        if prompt.endswith(", my style"):
            return ["My style"], prompt[: -len(", my style")], negative
        return [], prompt, negative

    parsed = parse_infotext("a cat, my style\nSteps: 1, Sampler: Euler, Seed: 1", extract_styles=extract)
    assert parsed["Prompt"] == "a cat" and parsed["Styles array"] == ["My style"]
    none = parse_infotext("a dog\nSteps: 1, Sampler: Euler, Seed: 1", extract_styles=extract)
    assert "Styles array" not in none


def _png(**text) -> Image.Image:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return Image.open(io.BytesIO(out.getvalue()))


def test_read_info_png_items_and_novelai():
    geninfo, items = read_info_from_image(_png(parameters="x\nSteps: 1", extras="more"))
    assert geninfo == "x\nSteps: 1" and items == {"extras": "more"}
    novel = _png(Software="NovelAI", Description="a fox", Comment=json.dumps(
        {"uc": "lowres", "steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 5}))
    geninfo, _ = read_info_from_image(novel)
    assert geninfo == ("a fox\nNegative prompt: lowres\nSteps: 28, Sampler: Euler a, CFG scale: 11, Seed: 5, "
                       "Size: 8x8, Clip skip: 2, ENSD: 31337")


def test_read_info_jpeg_exif_user_comment():
    from service.a1111.encode import encode_image

    data = encode_image(Image.new("RGB", (8, 8)), "jpg", "ünïcode prompt\nSteps: 3")
    geninfo, items = read_info_from_image(Image.open(io.BytesIO(data)))
    assert geninfo == "ünïcode prompt\nSteps: 3" and "exif" not in items
    assert user_comment(b"ASCII\0\0\0plain") == "plain"
    assert user_comment(b"\0" * 8 + b"raw") == "\0" * 8 + "raw"  # piexif refuses: A1111 decodes it all

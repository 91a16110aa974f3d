"""service/a1111/filenames.py against A1111 v1.10.1 modules/images.py: the expected names are worked out by
hand from A1111's rules (sanitize_filename_part, FilenameGenerator's tags, get_next_sequence_number)."""

import datetime
import hashlib

import pytest
from PIL import Image

from service.a1111.filenames import (
    FilenameGenerator,
    NameContext,
    get_next_sequence_number,
    literal_parts,
    sanitize_filename_part,
    scheduler_tag,
)

NOW = datetime.datetime(2024, 3, 5, 22, 30, 15, tzinfo=datetime.UTC)


def ctx(**kw) -> NameContext:
    base = dict(steps=20, cfg_scale=7.0, sampler="DPM++ 2M", scheduler_label="Karras", prompt="a cat",
                negative_prompt="blurry", all_seeds=(42,), model_name="my model", model_hash="6ce0161689",
                job_timestamp="20240305223015", clip_skip=2, max_prompt_words=3, now=lambda: NOW)
    base.update(kw)
    return NameContext(**base)


def gen(pattern: str, prompt="a cat, on a mat", seed=42, image=None, **kw) -> str:
    image = image or Image.new("RGB", (64, 48), (1, 2, 3))
    return FilenameGenerator(ctx(**kw), seed, prompt, image).apply(pattern)


@pytest.mark.parametrize(("text", "spaces", "expected"), [
    ("  a b/c:d?.. ", True, "__a_b_c_d_.._"),
    (" x. ", False, "x"),
    ("#tag<1>|*\t\r\n", False, "_tag_1______"),
    ("..", False, ""),
    ("a" * 200, False, "a" * 128),
    ("C:\\Windows\\x", False, "C__Windows_x"),
    (None, True, None),
])
def test_sanitize_filename_part(text, spaces, expected):
    assert sanitize_filename_part(text, replace_spaces=spaces) == expected


def test_default_sample_patterns():
    assert gen("[seed]") == "42"
    assert gen("[seed]-[prompt_spaces]") == "42-a cat, on a mat"
    assert gen("[prompt]") == "a_cat,_on_a_mat"
    assert gen("[prompt_words]") == "a cat on"  # directories_max_prompt_words = 3 here
    assert gen("[prompt_words]", prompt=",,, !!") == "empty"


def test_tags_are_case_insensitive_and_unknown_ones_stay():
    assert gen("[STEPS]x[Cfg]-[sampler]-[scheduler]") == "20x7.0-DPM++ 2M-Karras"
    assert gen("[sampler_scheduler]") == "DPM++ 2M Karras"
    assert gen("[unknown]-[seed]") == "[unknown]-42"
    assert gen("[unknown<arg><2>]") == "[unknown]"  # arguments are dropped, the tag kept
    assert gen("[model_hash]", model_hash=None) == "[model_hash]"  # a missing value keeps the tag
    assert gen("[user]") == "[user]"  # the API has no user
    assert gen("[width]x[height]") == "64x48"  # the image's own size
    assert gen("[model_name]-[model_hash]-[clip_skip]") == "my model-6ce0161689-2"
    assert gen("[job_timestamp]") == "20240305223015"
    assert gen("[none]") == ""
    assert gen("[vae_filename]") == "NoneType"


def test_date_and_datetime():
    assert gen("[date]") == "2024-03-05"
    assert gen("[datetime]") == "20240305223015"
    assert gen("[datetime<%Y>]") == "2024"
    assert gen("[datetime<%H:%M><Asia/Tokyo>]") == "07_30"  # +9 h, ':' sanitised
    assert gen("[datetime<><Not/AZone>]") == NOW.astimezone(None).strftime("%Y%m%d%H%M%S")


def test_tags_that_vanish_with_the_text_before_them():
    assert gen("x-[seed_last]-y") == "-y"  # batch size 1
    assert gen("x-[seed_last]-y", all_seeds=(42, 43), batch_size=2) == "x-43-y"
    assert gen("[seed_first]", all_seeds=(40, 41), batch_size=2) == "40"
    assert gen("a-[batch_number]") == ""
    assert gen("a-[batch_number]", batch_size=2, batch_index=1) == "a-2"
    assert gen("g[generation_number]", n_iter=2, batch_size=2, iteration=1, batch_index=0) == "g3"
    assert gen("g[generation_number]") == ""
    assert gen("d[denoising]") == ""
    assert gen("d[denoising]", denoising_strength=0.75) == "d0.75"


def test_styles_hashes_and_hasprompt():
    assert gen("[styles]", styles=("s1", "None", "s 2")) == "s1, s 2"
    assert gen("[styles]") == "None"
    assert gen("[prompt_no_styles]", prompt="a cat, masterpiece",
               style_prompts=("{prompt}, masterpiece",)) == "a cat"
    assert gen("[prompt_hash]") == hashlib.sha256(b"a cat, on a mat").hexdigest()[:8]
    assert gen("[prompt_hash<4>]") == hashlib.sha256(b"a cat, on a mat").hexdigest()[:4]
    assert gen("[full_prompt_hash]") == hashlib.sha256(b"a cat blurry").hexdigest()[:8]
    assert gen("[negative_prompt_hash]") == hashlib.sha256(b"blurry").hexdigest()[:8]
    image = Image.new("RGB", (4, 4), (9, 9, 9))
    assert gen("[image_hash<6>]", image=image) == hashlib.sha256(image.tobytes()).hexdigest()[:6]
    assert gen("[hasprompt<cat|nocat><dog|nodog><bird>]") == "catnodog"


def test_scheduler_tag_capitalises_like_a1111():
    assert scheduler_tag(None, "Automatic") == "Automatic"
    assert scheduler_tag("karras", "Automatic") == "Karras"
    assert scheduler_tag(None, "SGM Uniform") == "Sgm uniform"


def test_next_sequence_number(tmp_path):
    assert get_next_sequence_number(tmp_path, "") == 0
    for name in ("00003-1.png", "00010-abc.png", "grid-0004.png", "x.png", "00002.txt", ".hidden.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert get_next_sequence_number(tmp_path, "") == 11
    assert get_next_sequence_number(tmp_path, "grid") == 5
    assert get_next_sequence_number(tmp_path, "other") == 0


def test_literal_parts_are_what_no_sanitising_touches():
    assert literal_parts("[date]") == ["", ""]
    assert literal_parts("[model_name]/[prompt_words]") == ["", "/", ""]
    assert literal_parts("../x-[seed]-y") == ["../x-", "-y"]
    assert literal_parts("[x/../y]-[SEED]") == ["[x/../y]-", ""]  # unknown tags stay as written
    assert literal_parts("[datetime<%Y/%m>][unknown<a>]") == ["", "[unknown]"]  # arguments of either are dropped

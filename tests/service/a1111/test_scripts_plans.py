"""The scripts' pure parts (service/a1111/scripts/): X/Y/Z value parsing against the examples of A1111's
wiki (Features, "X/Y/Z plot"), prompt matrix combinations, prompts-from-file line syntax, SD upscale's tile
arithmetic (A1111 modules/images.py: split_grid/combine_grid), loopback's denoising curves, the legends."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from service.a1111.errors import InvalidRequest
from service.a1111.scripts import loopback, prompt_matrix, prompts_from_file, sd_upscale, xyz_grid
from service.a1111.scripts.context import ScriptContext
from service.a1111.sdapi_models import Txt2ImgRequest
from tests.images import noise_image


def axis(label: str, img2img: bool = False) -> xyz_grid.AxisOption:
    return next(o for o in xyz_grid.axis_options(img2img) if o.label == label)


@pytest.mark.parametrize(("label", "text", "expected"), [
    # A1111 wiki, Features → X/Y/Z plot: "Simple ranges", "Ranges with increment in bracket", "Ranges with
    # the count in square brackets".
    ("Steps", "1-5", [1, 2, 3, 4, 5]),
    ("Steps", "1-5 (+2)", [1, 3, 5]),
    ("Steps", "10-5 (-3)", [10, 7]),
    ("CFG Scale", "1-3 (+0.5)", [1.0, 1.5, 2.0, 2.5, 3.0]),
    ("Steps", "1-10 [5]", [1, 3, 5, 7, 10]),
    ("CFG Scale", "0.0-1.0 [6]", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    ("Seed", "1, 5, -1", [1, 5, -1]),
    ("Steps", "1-3, 8", [1, 2, 3, 8]),
    ("Prompt S/R", 'cat, "a, b",dog', ["cat", "a, b", "dog"]),  # csv quoting, spaces stripped
    ("Nothing", "ignored", [0]),
])
def test_value_parsing(label, text, expected):
    values = xyz_grid.parse_values(axis(label), text, None, csv_mode=True)
    assert values == pytest.approx(expected) if isinstance(expected[0], float) else values == expected
    assert all(type(v) is type(expected[0]) for v in values)


def test_choice_axes_read_the_dropdown_unless_csv_mode():
    sampler = axis("Sampler")
    assert xyz_grid.parse_values(sampler, "Euler, DDIM", ["Heun"], csv_mode=False) == ["Heun"]
    assert xyz_grid.parse_values(sampler, "Euler, DDIM", ["Heun"], csv_mode=True) == ["Euler", "DDIM"]


def test_prompt_order_permutations():
    assert xyz_grid.parse_values(axis("Prompt order"), "a, b", None, True) == [("a", "b"), ("b", "a")]


def test_bad_values_are_422():
    with pytest.raises(InvalidRequest):
        xyz_grid.parse_values(axis("Steps"), "ten", None, True)
    with pytest.raises(InvalidRequest):
        xyz_grid.parse_values(axis("Steps"), "1-100000000", None, True)


def test_axis_indexes_are_a1111s_per_tab():
    """The txt2img list A1111 clients index (webuiapi-style: 1 Seed, 4 Steps, 7 Prompt S/R)."""
    t2i = [o.label for o in xyz_grid.axis_options(False)]
    assert t2i[:10] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                        "Prompt S/R", "Prompt order", "Sampler"]
    i2i = [o.label for o in xyz_grid.axis_options(True)]
    assert i2i[5:9] == ["CFG Scale", "Image CFG Scale", "Prompt S/R", "Prompt order"]
    assert t2i[-1] == "Size" and "Hires steps" not in i2i


def test_xyz_plan_cells_and_overrides():
    req = Txt2ImgRequest(prompt="a cat", seed=3, steps=4)
    ctx = ScriptContext(is_img2img=False, find_checkpoint=lambda name: {"m": "m.safetensors [abc]"}.get(name))
    labels = [o.label for o in xyz_grid.axis_options(False)]
    args = [labels.index("Clip skip"), "1, 2", [], labels.index("Prompt S/R"), "cat, dog", [], 0, "", [],
            True, False, False, False, False, False, False, 0, False]
    plan = xyz_grid.plan(req, args, ctx)
    cells = [s.request for s in plan.requests]
    assert [(c.prompt, (c.override_settings or {}).get("CLIP_stop_at_last_layers")) for c in cells] == [
        ("a cat", 1), ("a cat", 2), ("a dog", 1), ("a dog", 2)]  # z outermost, then y, then x (equal costs)
    assert all(c.seed == 3 and c.script_name is None for c in cells)
    with pytest.raises(InvalidRequest, match="did not find"):
        xyz_grid.plan(req, [labels.index("Prompt S/R"), "horse, dog", []], ctx)
    with pytest.raises(InvalidRequest, match="Unknown checkpoint"):
        xyz_grid.plan(req, [labels.index("Checkpoint name"), "x", [], 0, "", [], 0, "", [], True, False, False,
                            False, False, False, False, 0, True], ctx)


def test_xyz_checkpoint_axis_runs_outermost():
    req = Txt2ImgRequest(prompt="a", seed=1)
    ctx = ScriptContext(is_img2img=False, find_checkpoint=lambda name: name + ".safetensors")
    labels = [o.label for o in xyz_grid.axis_options(False)]
    args = [labels.index("Checkpoint name"), "m1, m2", [], labels.index("Steps"), "1, 2", [], 0, "", [], True,
            False, False, False, False, False, False, 0, True]
    cells = [s.request for s in xyz_grid.plan(req, args, ctx).requests]
    assert [(c.override_settings["sd_model_checkpoint"], c.steps) for c in cells] == [
        ("m1.safetensors", 1), ("m1.safetensors", 2), ("m2.safetensors", 1), ("m2.safetensors", 2)]


def test_prompt_matrix_combinations():
    assert prompt_matrix.combinations("a cat|red|big, ", False, ", ") == [
        "a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert prompt_matrix.combinations("cat|red", True, " ") == ["cat", "red cat"]


def test_prompt_matrix_seeds():
    req = Txt2ImgRequest(prompt="x|y|z", seed=10, subseed=20)
    subs = prompt_matrix.plan(req, [False, True], ScriptContext(is_img2img=False)).requests
    assert [(s.request.prompt, s.request.seed, s.request.subseed) for s in subs] == [
        ("x", 10, 20), ("x, y", 11, 21), ("x, z", 12, 22), ("x, y, z", 13, 23)]


def test_prompts_from_file_line_syntax():
    jobs = prompts_from_file.parse_lines(
        'plain prompt\n  \n--prompt "a cat" sitting --steps 10 --cfg_scale 3.5 --negative_prompt dark\n'
        '--sampler_name euler --tiling true --outpath_samples /etc\n--bogus 1\n--seed\n')
    assert jobs == [
        {"prompt": "plain prompt"},
        {"prompt": "a cat sitting", "steps": 10, "cfg_scale": 3.5, "negative_prompt": "dark"},
        {"sampler_name": "Euler", "tiling": True},  # the output path is read and dropped
        {"prompt": "--bogus 1"},  # unknown option: the whole line is the prompt, as A1111 does
        {"prompt": "--seed"},  # missing argument
    ]


def test_prompts_from_file_prompt_position_and_seed_iteration():
    req = Txt2ImgRequest(prompt="base", seed=5, batch_size=2)
    ctx = ScriptContext(is_img2img=False)
    subs = prompts_from_file.plan(req, [True, False, "end", "one\ntwo"], ctx).requests
    assert [(s.request.prompt, s.request.seed) for s in subs] == [("base one", 5), ("base two", 7)]


def test_split_grid_tiles_as_a1111():
    """A1111 split_grid for 1000×700 in 512 tiles overlapping 64: cols = ceil(936/448) = 3, dx = 488/2 = 244;
    rows = ceil(636/448) = 2, dy = 188."""
    grid = sd_upscale.split_grid(noise_image(1000, 700, seed=1), 512, 512, 64)
    assert [y for y, _h, _row in grid.tiles] == [0, 188]
    assert [[x for x, _w, _t in row] for _y, _h, row in grid.tiles] == [[0, 244, 488], [0, 244, 488]]
    assert all(t.size == (512, 512) for _y, _h, row in grid.tiles for _x, _w, t in row)


def test_combine_grid_of_unchanged_tiles_is_the_image():
    image = noise_image(300, 200, seed=2)
    out = sd_upscale.combine_grid(sd_upscale.split_grid(image, 128, 96, 32))
    assert np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def test_combine_grid_blends_the_overlap_linearly():
    black, white = Image.new("RGB", (64, 64), "black"), Image.new("RGB", (64, 64), "white")
    grid = sd_upscale.Grid([[0, 64, [[0, 64, black], [32, 64, white]]]], 64, 64, 96, 64, 32)
    row = np.asarray(sd_upscale.combine_grid(grid))[0, :, 0]
    assert list(row[32:64]) == [int(i * 255 / 32) for i in range(32)]  # A1111's mask: arange * 255 / overlap
    assert row[0] == 0 and row[95] == 255


@pytest.mark.parametrize(("curve", "f"), [("Linear", lambda p: p), ("Aggressive", lambda p: math.sin(p * math.pi / 2)),
                                          ("Lazy", lambda p: 1 - math.cos(p * math.pi / 2))])
def test_loopback_curves(curve, f):
    for loop in range(4):
        expected = 0.75 + (0.25 - 0.75) * f(loop / 3)
        assert loopback.denoising_strength(loop, 4, 0.75, 0.25, curve) == pytest.approx(expected)
    assert loopback.denoising_strength(3, 1, 0.75, 0.25, curve) == 0.75


def test_grid_annotations_layout():
    """A1111's arithmetic: font (w+h)//25, a left pad of 3/4 of a cell with row texts, a top band, margins."""
    from service.a1111.grid_annotations import GridAnnotation, draw_grid_annotations

    grid = Image.new("RGB", (200, 100), "red")
    out = draw_grid_annotations(grid, 100, 100, [[GridAnnotation("a")], [GridAnnotation("b")]],
                                [[GridAnnotation("row")]], margin=10)
    assert out.width == 200 + 75 + 10
    assert out.height > 100
    arr = np.asarray(out)
    top = out.height - 100
    assert (arr[top:, 75:175] == [255, 0, 0]).all() and (arr[top:, 185:] == [255, 0, 0]).all()
    assert (arr[top:, 175:185] == 255).all()  # the margin in the background colour
    plain = draw_grid_annotations(grid, 100, 100, [[GridAnnotation()]] * 2, [[GridAnnotation()]])
    assert plain.size == (200, 100)  # no texts, no bands


def test_xyz_cell_is_its_batch_grid_only_when_a1111_makes_one():
    from service.a1111.scripts.base import CellRun, SubRequest

    images = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]

    def run(**fields) -> CellRun:
        req = Txt2ImgRequest(batch_size=2, **fields)
        return CellRun(SubRequest(req), images, ["i0", "i1"], ["p"] * 2, [""] * 2, [1, 2], [0, 0], lambda e, i: "")

    ctx = ScriptContext(is_img2img=False)
    assert xyz_grid.cell_image(run(), ctx) == (images[0], "i0")  # save_images false: no grid (the API default)
    grid, text = xyz_grid.cell_image(run(save_images=True), ctx)
    assert grid.size == (16, 8) and text == "i0"
    off = ScriptContext(is_img2img=False, options={"return_grid": False})
    assert xyz_grid.cell_image(run(save_images=True), off)[0] is images[0]


@pytest.mark.parametrize(("label", "text", "where", "expected"), [
    # The axes the issue names, each onto the field or option A1111's apply function sets.
    ("Seed", "7, 8", "seed", [7, 8]),
    ("Var. seed", "3, 4", "subseed", [3, 4]),
    ("Steps", "1-2", "steps", [1, 2]),
    ("CFG Scale", "2.5, 9", "cfg_scale", [2.5, 9.0]),
    ("Prompt S/R", "cat, dog", "prompt", ["a cat", "a dog"]),
    ("Sampler", "euler a, DDIM", "sampler_name", ["Euler a", "DDIM"]),
    ("Schedule type", "Karras, Exponential", "scheduler", ["Karras", "Exponential"]),
    ("Denoising", "0.25, 0.5", "denoising_strength", [0.25, 0.5]),
    ("Size", "64x96, 128 x 64", ("width", "height"), [(64, 96), (128, 64)]),
    ("Clip skip", "1-2", "override:CLIP_stop_at_last_layers", [1, 2]),
    ("VAE", "Automatic, None", "override:sd_vae", ["Automatic", "None"]),
    ("Checkpoint name", "m", "override:sd_model_checkpoint", ["m.safetensors"]),
    ("RNG source", "CPU, NV", "override:randn_source", ["CPU", "NV"]),
])
def test_each_axis_sets_what_a1111_sets(label, text, where, expected):
    req = Txt2ImgRequest(prompt="a cat", seed=1)
    ctx = ScriptContext(is_img2img=False, find_checkpoint=lambda name: name + ".safetensors")
    labels = [o.label for o in xyz_grid.axis_options(False)]
    args = [labels.index(label), text, [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0,
            True]
    cells = [s.request for s in xyz_grid.plan(req, args, ctx).requests]
    if isinstance(where, tuple):
        got = [tuple(getattr(c, f) for f in where) for c in cells]
    elif where.startswith("override:"):
        got = [c.override_settings[where.split(":", 1)[1]] for c in cells]
    else:
        got = [getattr(c, where) for c in cells]
    assert got == expected

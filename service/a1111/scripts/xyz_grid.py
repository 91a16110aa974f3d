"""X/Y/Z plot (A1111 scripts/xyz_grid.py): one generation per (x, y, z) cell, a grid per z with legends, a
grid of those grids, then the infotexts and images in A1111's order.

`script_args` (19, positional, A1111's run()): x_type, x_values, x_values_dropdown, y_type, y_values,
y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids,
no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode. The types are indexes into
the tab's axis list (`axis_options(is_img2img)`), as A1111's dropdowns of type "index" send them; sdedge also
takes the axis label.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import StringIO
from itertools import chain, permutations
from typing import Any

import numpy as np
from PIL import Image

from engine.samplers import SAMPLERS
from engine.schedules import SCHEDULERS
from service.a1111.grid_annotations import GridAnnotation, draw_grid_annotations
from service.a1111.grids import image_grid
from service.a1111.scripts.base import CellRun, ScriptArg, ScriptOutput, ScriptPlan, SubRequest, positional
from service.a1111.scripts.context import ScriptContext, bad_arg, fixed_seed
from service.a1111.scripts.draft import Draft
from service.a1111.sdapi_models import GenerationRequest

TITLE = "X/Y/Z plot"


def str_permutations(x):
    return x


Apply = Callable[[Draft, Any, list, ScriptContext], None]


@dataclass(frozen=True)
class AxisOption:
    label: str
    type: Any
    apply: Apply
    format: str = "label"  # "label": "Label: value"; "value": the value; "join": ", ".join; "path"; "nothing"
    confirm: Callable[[list, ScriptContext], list] | None = None  # checks values, may canonicalise them
    cost: float = 0.0
    choices: Callable[[ScriptContext], list[str]] | None = None
    tab: bool | None = None  # None: both tabs; False: txt2img only; True: img2img only

    def format_value(self, x: Any) -> Any:
        if isinstance(x, float):
            x = round(x, 8)
        if self.format == "label":
            return f"{self.label}: {x}"
        if self.format == "join":
            return ", ".join(x)
        if self.format == "nothing":
            return ""
        if self.format == "path":
            return str(x).replace("\\", "/").rsplit("/", 1)[-1]
        return x


def field(name: str) -> Apply:
    def fun(d: Draft, x, xs, ctx) -> None:
        d[name] = x
    return fun


def override(name: str, boolean: bool = False) -> Apply:
    def fun(d: Draft, x, xs, ctx) -> None:
        d.overrides[name] = (x.lower() == "true") if boolean else x
    return fun


def apply_prompt(d: Draft, x, xs, ctx) -> None:
    prompt, negative = d["prompt"] or "", d["negative_prompt"] or ""
    if xs[0] not in prompt and xs[0] not in negative:
        raise bad_arg(TITLE, f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    d["prompt"], d["negative_prompt"] = prompt.replace(xs[0], x), negative.replace(xs[0], x)


def apply_order(d: Draft, x, xs, ctx) -> None:
    prompt = d["prompt"] or ""
    order = sorted(((prompt.find(token), token) for token in x), key=lambda t: t[0])
    parts = []
    for _, token in order:
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token):]
    d["prompt"] = "".join(part + x[i] for i, part in enumerate(parts)) + prompt


def apply_checkpoint(d: Draft, x, xs, ctx) -> None:
    d.overrides["sd_model_checkpoint"] = ctx.find_checkpoint(x)


def confirm_checkpoints(xs: list, ctx: ScriptContext) -> list:
    for x in xs:
        if ctx.find_checkpoint(x) is None:
            raise bad_arg(TITLE, f"Unknown checkpoint: {x}")
    return xs


def confirm_checkpoints_or_none(xs: list, ctx: ScriptContext) -> list:
    return confirm_checkpoints([x for x in xs if x not in (None, "", "None", "none")], ctx) and xs or xs


def confirm_samplers(xs: list, ctx: ScriptContext) -> list:
    """A1111 checks names case-insensitively but then sets the text as sent, and a cell whose sampler is not
    spelled exactly fails (a blank cell); sdedge sets the sampler's own spelling."""
    names = {name.lower(): name for name in SAMPLERS}
    out = []
    for x in xs:
        if x.lower() not in names:
            raise bad_arg(TITLE, f"Unknown sampler: {x}")
        out.append(names[x.lower()])
    return out


def apply_size(d: Draft, x: str, xs, ctx) -> None:
    width, _, height = x.partition("x")
    try:
        d["width"], d["height"] = int(width.strip()), int(height.strip())
    except ValueError:
        pass  # A1111 prints "Invalid size in XYZ plot" and leaves the size


def apply_vae(d: Draft, x: str, xs, ctx) -> None:
    name = x.strip().lower()
    if name in ("auto", "automatic"):
        d.overrides["sd_vae"] = "Automatic"
    elif name == "none":
        d.overrides["sd_vae"] = "None"
    else:
        d.overrides["sd_vae"] = next((k for k in ctx.vae_names if k.lower() == name), "Automatic")


def apply_styles(d: Draft, x: str, xs, ctx) -> None:
    d["styles"] = [*(d["styles"] or []), *x.split(",")]


def apply_uni_pc_order(d: Draft, x, xs, ctx) -> None:
    d.overrides["uni_pc_order"] = min(x, (d["steps"] or 50) - 1)


def apply_face_restore(d: Draft, opt: str, xs, ctx) -> None:
    opt = opt.lower()
    if opt in ("codeformer", "gfpgan"):
        d.overrides["face_restoration_model"] = "CodeFormer" if opt == "codeformer" else "GFPGAN"
        d["restore_faces"] = True
    else:
        d["restore_faces"] = opt in ("true", "yes", "y", "1")


def do_nothing(d: Draft, x, xs, ctx) -> None:
    pass


def _samplers(ctx: ScriptContext) -> list[str]:
    hidden = set(ctx.option("hide_samplers", []))
    return [name for name in SAMPLERS if name not in hidden]


def _bool_choice(ctx: ScriptContext) -> list[str]:
    return ["False", "True"]


# A1111 v1.10.1's list, in its order (the types sent are indexes into it, filtered by tab).
AXIS_OPTIONS: tuple[AxisOption, ...] = (
    AxisOption("Nothing", str, do_nothing, format="nothing"),
    AxisOption("Seed", int, field("seed")),
    AxisOption("Var. seed", int, field("subseed")),
    AxisOption("Var. strength", float, field("subseed_strength")),
    AxisOption("Steps", int, field("steps")),
    AxisOption("Hires steps", int, field("hr_second_pass_steps"), tab=False),
    AxisOption("CFG Scale", float, field("cfg_scale")),
    AxisOption("Image CFG Scale", float, field("image_cfg_scale"), tab=True),
    AxisOption("Prompt S/R", str, apply_prompt, format="value"),
    AxisOption("Prompt order", str_permutations, apply_order, format="join"),
    AxisOption("Sampler", str, field("sampler_name"), format="value", confirm=confirm_samplers, choices=_samplers,
               tab=False),
    AxisOption("Hires sampler", str, field("hr_sampler_name"), confirm=confirm_samplers, choices=_samplers,
               tab=False),
    AxisOption("Sampler", str, field("sampler_name"), format="value", confirm=confirm_samplers, choices=_samplers,
               tab=True),
    AxisOption("Checkpoint name", str, apply_checkpoint, format="path", confirm=confirm_checkpoints, cost=1.0,
               choices=lambda ctx: list(ctx.checkpoints)),
    AxisOption("Negative Guidance minimum sigma", float, field("s_min_uncond")),
    AxisOption("Sigma Churn", float, field("s_churn")),
    AxisOption("Sigma min", float, field("s_tmin")),
    AxisOption("Sigma max", float, field("s_tmax")),
    AxisOption("Sigma noise", float, field("s_noise")),
    AxisOption("Schedule type", str, field("scheduler"), choices=lambda ctx: [s.label for s in SCHEDULERS.values()]),
    AxisOption("Schedule min sigma", float, override("sigma_min")),
    AxisOption("Schedule max sigma", float, override("sigma_max")),
    AxisOption("Schedule rho", float, override("rho")),
    AxisOption("Skip Early CFG", float, override("skip_early_cond")),
    AxisOption("Beta schedule alpha", float, override("beta_dist_alpha")),
    AxisOption("Beta schedule beta", float, override("beta_dist_beta")),
    AxisOption("Eta", float, field("eta")),
    AxisOption("Clip skip", int, override("CLIP_stop_at_last_layers")),
    AxisOption("Denoising", float, field("denoising_strength")),
    AxisOption("Initial noise multiplier", float, field("initial_noise_multiplier")),
    AxisOption("Extra noise", float, override("img2img_extra_noise")),
    AxisOption("Hires upscaler", str, field("hr_upscaler"), tab=False,
               choices=lambda ctx: ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                    "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)",
                                    *ctx.upscalers]),
    AxisOption("Cond. Image Mask Weight", float, override("inpainting_mask_weight"), tab=True),
    AxisOption("VAE", str, apply_vae, cost=0.7, choices=lambda ctx: ["Automatic", "None", *ctx.vae_names]),
    AxisOption("Styles", str, apply_styles, choices=lambda ctx: []),
    AxisOption("UniPC Order", int, apply_uni_pc_order, cost=0.5),
    AxisOption("Face restore", str, apply_face_restore, format="value"),
    AxisOption("Token merging ratio", float, override("token_merging_ratio")),
    AxisOption("Token merging ratio high-res", float, override("token_merging_ratio_hr")),
    AxisOption("Always discard next-to-last sigma", str, override("always_discard_next_to_last_sigma", True),
               choices=_bool_choice),
    AxisOption("SGM noise multiplier", str, override("sgm_noise_multiplier", True), choices=_bool_choice),
    AxisOption("Refiner checkpoint", str, field("refiner_checkpoint"), format="path",
               confirm=confirm_checkpoints_or_none, cost=1.0, choices=lambda ctx: ["None", *ctx.checkpoints]),
    AxisOption("Refiner switch at", float, field("refiner_switch_at")),
    AxisOption("RNG source", str, override("randn_source"), choices=lambda ctx: ["GPU", "CPU", "NV"]),
    AxisOption("FP8 mode", str, override("fp8_storage"), cost=0.9,
               choices=lambda ctx: ["Disable", "Enable for SDXL", "Enable"]),
    AxisOption("Size", str, apply_size),
)


def axis_options(is_img2img: bool) -> list[AxisOption]:
    """`self.current_axis_options`: the options of both tabs and of this tab."""
    return [o for o in AXIS_OPTIONS if o.tab is None or o.tab == is_img2img]


def script_args(is_img2img: bool) -> tuple[ScriptArg, ...]:
    labels = tuple(o.label for o in axis_options(is_img2img))

    def axis(name: str, default: str) -> tuple[ScriptArg, ...]:
        return (ScriptArg(f"{name} type", default, choices=labels), ScriptArg(f"{name} values", ""),
                ScriptArg(f"{name} values", [], choices=()))

    return (*axis("X", "Seed"), *axis("Y", "Nothing"), *axis("Z", "Nothing"),
            ScriptArg("Draw legend", True), ScriptArg("Include Sub Images", False),
            ScriptArg("Include Sub Grids", False), ScriptArg("Keep -1 for seeds", False),
            ScriptArg("Vary seeds for X", False), ScriptArg("Vary seeds for Y", False),
            ScriptArg("Vary seeds for Z", False), ScriptArg("Grid margins (px)", 0, 0, 500, 2),
            ScriptArg("Use text inputs instead of dropdowns", False))


# A1111's range syntaxes: "1-5", "1-5 (+2)" and "1-10 [5]" (a count), for ints and floats.
re_range = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
re_range_count = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
re_range_count_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")

MAX_AXIS_VALUES = 4096  # a range like "1-100000000" would otherwise build the list before any check


def list_to_csv_string(data: Sequence[str]) -> str:
    with StringIO() as o:
        csv.writer(o).writerow(data)
        return o.getvalue().strip()


def csv_string_to_list_strip(data: str) -> list[str]:
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data), skipinitialspace=True))))


def _int(text: str) -> int:
    return int(text.replace(" ", ""))


def _float(text: str) -> float:
    return float(text.replace(" ", ""))


def _extend(out: list, values) -> None:
    if len(out) + len(values) > MAX_AXIS_VALUES:
        raise bad_arg(TITLE, f"an axis can have at most {MAX_AXIS_VALUES} values")
    out.extend(values)


def parse_values(opt: AxisOption, vals: str, vals_dropdown: Sequence[str] | None, csv_mode: bool) -> list:
    """`process_axis` of A1111's run(): the values of one axis, ranges expanded, converted to the axis type.
    (A1111's int(" 5") accepts the spaces its regexes allow inside a number; `_int` does the same.)"""
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and not csv_mode:
        valslist = list(vals_dropdown or [])
    else:
        valslist = csv_string_to_list_strip(vals or "")
    out: list = []
    if opt.type is int or opt.type is float:
        is_int = opt.type is int
        for val in valslist:
            if val.strip() == "":
                continue
            m = (re_range if is_int else re_range_float).fullmatch(val)
            mc = (re_range_count if is_int else re_range_count_float).fullmatch(val)
            try:
                if m is not None:
                    if is_int:
                        start, end = _int(m.group(1)), _int(m.group(2)) + 1
                        step = _int(m.group(3)) if m.group(3) is not None else 1
                        if step == 0:
                            raise bad_arg(TITLE, f"range {val!r} has a step of 0")
                        if abs((end - start) // step) > MAX_AXIS_VALUES:
                            raise bad_arg(TITLE, f"an axis can have at most {MAX_AXIS_VALUES} values")
                        _extend(out, list(range(start, end, step)))
                    else:
                        start, end = _float(m.group(1)), _float(m.group(2))
                        step = _float(m.group(3)) if m.group(3) is not None else 1.0
                        if step == 0 or abs((end - start) / step) > MAX_AXIS_VALUES:
                            raise bad_arg(TITLE, f"range {val!r} has too many values")
                        _extend(out, np.arange(start, end + step, step).tolist())
                elif mc is not None:
                    num = int(mc.group(3)) if mc.group(3) is not None else 1
                    if is_int:
                        start, end = _int(mc.group(1)), _int(mc.group(2))
                        _extend(out, [int(x) for x in np.linspace(start=start, stop=end, num=min(num, MAX_AXIS_VALUES + 1)).tolist()])
                    else:
                        start, end = _float(mc.group(1)), _float(mc.group(2))
                        _extend(out, np.linspace(start=start, stop=end, num=min(num, MAX_AXIS_VALUES + 1)).tolist())
                else:
                    out.append(val)
            except ValueError:
                raise bad_arg(TITLE, f"{opt.label} value {val!r} is not a number") from None
        valslist = out
    elif opt.type is str_permutations:
        if len(valslist) > 6:
            raise bad_arg(TITLE, "Prompt order takes at most 6 tokens (720 permutations)")
        valslist = list(permutations(valslist))
    try:
        return [opt.type(x) for x in valslist]
    except (TypeError, ValueError):
        raise bad_arg(TITLE, f"{opt.label}: values {valslist!r} are not all of type {opt.type.__name__}") from None


def _axis(options: list[AxisOption], value: Any, which: str) -> AxisOption:
    value = value or 0  # A1111: a None type is 0 ("Nothing")
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        found = [o for o in options if o.label.lower() == value.strip().lower()]
        if not found:
            raise bad_arg(TITLE, f"unknown {which} type {value!r}")
        return found[0]
    index = int(value)
    if not 0 <= index < len(options):
        raise bad_arg(TITLE, f"{which} type {index} is not one of the {len(options)} axes of this tab")
    return options[index]


def _processing_order(x_opt: AxisOption, y_opt: AxisOption, z_opt: AxisOption) -> tuple[str, str]:
    """Which axes the loops run over outermost (the costliest first: checkpoints change least often)."""
    first, second = "z", "y"
    x, y, z = x_opt.cost, y_opt.cost, z_opt.cost
    if x > y and x > z:
        first, second = "x", ("y" if y > z else "z")
    elif y > x and y > z:
        first, second = "y", ("x" if x > z else "z")
    elif z > x and z > y:
        first, second = "z", ("x" if x > y else "y")
    return first, second


def _order(first: str, second: str, nx: int, ny: int, nz: int) -> list[tuple[int, int, int]]:
    sizes = {"x": nx, "y": ny, "z": nz}
    third = next(a for a in "xyz" if a not in (first, second))
    cells = []
    for a in range(sizes[first]):
        for b in range(sizes[second]):
            for c in range(sizes[third]):
                pos = {first: a, second: b, third: c}
                cells.append((pos["x"], pos["y"], pos["z"]))
    return cells


def plan(req: GenerationRequest, args: Sequence[Any], ctx: ScriptContext) -> ScriptPlan:
    (x_type, x_values, x_drop, y_type, y_values, y_drop, z_type, z_values, z_drop, draw_legend, include_lone_images,
     include_sub_grids, no_fixed_seeds, vary_x, vary_y, vary_z, margin_size, csv_mode) = positional(
        args, script_args(ctx.is_img2img))
    options = axis_options(ctx.is_img2img)
    base = Draft(req)
    if not no_fixed_seeds:
        base["seed"] = fixed_seed(base["seed"], ctx)
        base["subseed"] = fixed_seed(base["subseed"], ctx)
    if not ctx.option("return_grid", True):
        base["batch_size"] = 1
    base_req = base.build(TITLE)

    axes = []
    for which, type_, values, drop in (("X", x_type, x_values, x_drop), ("Y", y_type, y_values, y_drop),
                                       ("Z", z_type, z_values, z_drop)):
        opt = _axis(options, type_, which)
        if opt.choices is not None and not csv_mode:
            values = list_to_csv_string(drop or [])
        vals = parse_values(opt, values, drop, bool(csv_mode))
        if not vals:
            hint = (f" (the {opt.label} axis reads {which.lower()}_values_dropdown unless csv_mode is true)"
                    if opt.choices is not None and not csv_mode else "")
            raise bad_arg(TITLE, f"{which} axis {opt.label} has no values{hint}")
        if opt.confirm:
            vals = opt.confirm(vals, ctx)
        if not no_fixed_seeds and opt.label in ("Seed", "Var. seed"):
            vals = [ctx.random_seed() if v is None or v == "" or v == -1 else v for v in vals]
        axes.append((opt, vals, values))
    (x_opt, xs, x_text), (y_opt, ys, y_text), (z_opt, zs, z_text) = axes

    width, height = base_req.width or 512, base_req.height or 512
    grid_mp = round(len(xs) * len(ys) * len(zs) * width * height / 1000000)
    max_mp = ctx.option("img_max_size_mp", 200)
    if grid_mp >= max_mp:
        raise bad_arg(TITLE, f"Resulting grid would be too large ({grid_mp} MPixels) (max configured size is "
                             f"{max_mp} MPixels)")

    order = _order(*_processing_order(x_opt, y_opt, z_opt), len(xs), len(ys), len(zs))
    subs = []
    for ix, iy, iz in order:
        d = Draft(base_req)
        x_opt.apply(d, xs[ix], xs, ctx)
        y_opt.apply(d, ys[iy], ys, ctx)
        z_opt.apply(d, zs[iz], zs, ctx)
        if vary_x or vary_y or vary_z:
            xdim = len(xs) if vary_x else 1
            ydim = len(ys) if vary_y else 1
            d["seed"] = int(d["seed"]) + (ix if vary_x else 0) + (iy * xdim if vary_y else 0) + (
                iz * xdim * ydim if vary_z else 0)
        subs.append(SubRequest(d.build(TITLE)))

    labels = [[o.format_value(v) for v in vs] for o, vs, _ in axes]

    def extras(opt: AxisOption, which: str, text: str, vals: list) -> dict[str, Any]:
        if opt.label == "Nothing":
            return {}
        out = {f"{which} Type": opt.label, f"{which} Values": text}
        if opt.label in ("Seed", "Var. seed") and not no_fixed_seeds:
            out[f"Fixed {which} Values"] = ", ".join(str(v) for v in vals)
        return out

    sub_extras = {"Script": TITLE, **extras(x_opt, "X", x_text, xs), **extras(y_opt, "Y", y_text, ys)}
    main_extras = {**sub_extras, **extras(z_opt, "Z", z_text, zs)}

    def combine(runs: Sequence[CellRun]) -> ScriptOutput:
        return draw_xyz_grid(runs, order, len(xs), len(ys), len(zs), labels, sub_extras, main_extras,
                             bool(draw_legend), bool(include_lone_images), bool(include_sub_grids),
                             int(margin_size or 0), ctx)

    return ScriptPlan(requests=subs, combine=combine)


def cell_image(run: CellRun, ctx: ScriptContext) -> tuple[Image.Image, str]:
    """A cell's `processed.images[0]`: its first image, or the grid of its batch when process_images makes one
    (A1111 process_images_inner: save_images — the API's do_not_save_grid is its negation —, option return_grid,
    and at least two images unless grid_only_if_multiple is off); the grid carries the first infotext."""
    request = run.sub.request
    count = len(run.images)
    if (request.save_images and ctx.option("return_grid", True)
            and not (count < 2 and ctx.option("grid_only_if_multiple", True))):
        grid = image_grid(run.images, request.batch_size or 1, n_rows=ctx.option("n_rows", -1),
                          grid_prevent_empty_spots=ctx.option("grid_prevent_empty_spots", False),
                          grid_background_color=ctx.option("grid_background_color", "#ffffff"))
        return grid, run.infotexts[0]
    return run.images[0], run.infotexts[0]


def draw_xyz_grid(runs: Sequence[CellRun], order: list[tuple[int, int, int]], nx: int, ny: int, nz: int,
                  labels: list[list[Any]], sub_extras: dict, main_extras: dict, draw_legend: bool,
                  include_lone_images: bool, include_sub_grids: bool, margin: int,
                  ctx: ScriptContext) -> ScriptOutput:
    """A1111's draw_xyz_grid and the end of run(): cells by index ix + iy·nx + iz·nx·ny (the first image of
    each), a sub-grid per z with X/Y legends, the Z grid of the sub-grids, infotexts of the grids written from
    the first cell of each, then the sub-grids and cells dropped unless asked for."""
    colors = {"active_color": ctx.option("grid_text_active_color", "#000000"),
              "inactive_color": ctx.option("grid_text_inactive_color", "#999999"),
              "background_color": ctx.option("grid_background_color", "#ffffff")}
    size = nx * ny * nz
    cells: list[Image.Image | None] = [None] * size
    infotexts: list[str | None] = [None] * size
    prompts: list[str | None] = [None] * size
    seeds: list[int | None] = [None] * size
    by_index: dict[int, CellRun] = {}
    for run, (ix, iy, iz) in zip(runs, order, strict=False):
        idx = ix + iy * nx + iz * nx * ny
        by_index[idx] = run
        if run.images:
            cells[idx], infotexts[idx] = cell_image(run, ctx)
            prompts[idx], seeds[idx] = run.prompts[0], run.seeds[0]
    first = next((im for im in cells if im is not None), None)
    if first is None:
        return ScriptOutput(images=[], png_infotexts=[], infotexts=[])
    images = [im if im is not None else Image.new(first.mode, first.size) for im in cells]  # interrupted cells

    hor = [[GridAnnotation(str(x))] for x in labels[0]]
    ver = [[GridAnnotation(str(y))] for y in labels[1]]
    title = [[GridAnnotation(str(z))] for z in labels[2]]
    sub_grids, grid_infotexts = [], []
    for iz in range(nz):
        part = images[iz * nx * ny:(iz + 1) * nx * ny]
        grid = image_grid(part, rows=ny, grid_background_color=colors["background_color"])
        if draw_legend:
            w, h = (max(s) for s in zip(*(im.size for im in part), strict=True))
            grid = draw_grid_annotations(grid, w, h, hor, ver, margin, **colors)
        sub_grids.append(grid)
        run = by_index.get(iz * nx * ny)
        grid_infotexts.append(run.infotext_with(sub_extras, 0) if run is not None and run.images else None)
    z_grid = image_grid(sub_grids, rows=1, grid_background_color=colors["background_color"])
    if draw_legend:
        w, h = (max(s) for s in zip(*(im.size for im in sub_grids), strict=True))
        z_grid = draw_grid_annotations(z_grid, w, h, title, [[GridAnnotation()]], **colors)
    run0 = by_index.get(0)
    main_infotext = run0.infotext_with(main_extras, 0) if run0 is not None and run0.images else None

    out_images: list[Image.Image] = [z_grid]
    out_png: list[str | None] = [None]
    out_infotexts: list[str | None] = [main_infotext]
    if include_sub_grids:
        out_images += sub_grids
        out_png += [None] * nz
        out_infotexts += grid_infotexts
    if include_lone_images:
        out_images += images
        out_png += infotexts
    out_infotexts += infotexts  # A1111 keeps every cell's infotext even when it drops the cells' images
    # all_prompts/all_seeds: a sub-grid's entry (its first cell's) ahead of the cells' when sub-grids are kept;
    # A1111 inserts one per sub-grid, none for the Z grid, then deletes them again with the sub-grids.
    subs = list(range(nz)) if include_sub_grids else []
    saved_subs = [(sub_grids[iz], grid_infotexts[iz], prompts[iz * nx * ny], seeds[iz * nx * ny])
                  for iz in range(nz)] if nz > 1 else []
    return ScriptOutput(images=out_images, png_infotexts=out_png, infotexts=out_infotexts,  # type: ignore[arg-type]
                        index_of_first_image=1, sub_grids=saved_subs,  # type: ignore[arg-type]
                        all_prompts=[prompts[iz * nx * ny] for iz in subs] + prompts,  # type: ignore[operator]
                        all_seeds=[seeds[iz * nx * ny] for iz in subs] + seeds)  # type: ignore[operator]

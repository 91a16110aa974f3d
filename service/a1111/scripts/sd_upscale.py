"""SD upscale (A1111 scripts/sd_upscale.py), img2img only: upscale the init image, cut it into width×height
tiles overlapping by `overlap` px (modules/images.py: split_grid), img2img every tile, and blend the tiles
back with linear ramps over the overlaps (combine_grid).

`script_args`: the UI's info text (ignored), overlap, upscaler_index (an index into /sdapi/v1/upscalers, or
its name), scale_factor.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.image_ops import flatten
from service.a1111.scripts.base import CellRun, ScriptArg, ScriptOutput, ScriptPlan, SubRequest, positional
from service.a1111.scripts.context import ScriptContext, bad_arg, fixed_seed
from service.a1111.scripts.draft import Draft
from service.a1111.sdapi_models import GenerationRequest

TITLE = "SD upscale"
MAX_TILES = 1024

INFO = ("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; use width and "
        "height sliders to set tile size</p>")


def args(ctx: ScriptContext) -> tuple[ScriptArg, ...]:
    return (ScriptArg("", INFO), ScriptArg("Tile overlap", 64, 0, 256, 16),
            ScriptArg("Upscaler", ctx.upscalers[0], choices=tuple(ctx.upscalers)),
            ScriptArg("Scale Factor", 2.0, 1.0, 4.0, 0.05))


@dataclass
class Grid:
    """A1111's Grid namedtuple: rows of (y, h, [[x, w, tile], ...])."""

    tiles: list[list[Any]]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    w, h = image.width, image.height
    non_overlap_width, non_overlap_height = tile_w - overlap, tile_h - overlap
    cols = math.ceil((w - overlap) / non_overlap_width)
    rows = math.ceil((h - overlap) / non_overlap_height)
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        row_images = []
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, row_images])
    return grid


def combine_grid(grid: Grid) -> Image.Image:
    def mask(r: np.ndarray) -> Image.Image:
        return Image.fromarray((r * 255 / grid.overlap).astype(np.uint8), "L")

    mask_w = mask(np.arange(grid.overlap, dtype=np.float32).reshape((1, grid.overlap)).repeat(grid.tile_h, axis=0))
    mask_h = mask(np.arange(grid.overlap, dtype=np.float32).reshape((grid.overlap, 1)).repeat(grid.image_w, axis=1))
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        combined_row = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0:
                combined_row.paste(tile, (0, 0))
                continue
            combined_row.paste(tile.crop((0, 0, grid.overlap, h)), (x, 0), mask=mask_w)
            combined_row.paste(tile.crop((grid.overlap, 0, w, h)), (x + grid.overlap, 0))
        if y == 0:
            combined.paste(combined_row, (0, 0))
            continue
        combined.paste(combined_row.crop((0, 0, combined_row.width, grid.overlap)), (0, y), mask=mask_h)
        combined.paste(combined_row.crop((0, grid.overlap, combined_row.width, h)), (0, y + grid.overlap))
    return combined


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def upscaler_name(index: Any, ctx: ScriptContext) -> str:
    names = list(ctx.upscalers)
    if isinstance(index, str) and not index.strip().isdigit():
        found = [n for n in names if n.lower() == index.lower()]
        if not found:
            raise bad_arg(TITLE, f"could not find upscaler named {index}")
        return found[0]
    i = int(index)
    if not 0 <= i < len(names):
        raise bad_arg(TITLE, f"upscaler index {i} is not one of the {len(names)} upscalers")
    return names[i]


def plan(req: GenerationRequest, script_args: Sequence[Any], ctx: ScriptContext) -> ScriptPlan:
    _, overlap, upscaler_index, scale_factor = positional(script_args, args(ctx))
    overlap, scale_factor = int(overlap), float(scale_factor)
    name = upscaler_name(upscaler_index, ctx)
    if not req.init_images or ctx.decode_image is None:
        raise bad_arg(TITLE, "needs an init image")
    width, height = req.width or 512, req.height or 512
    if not 0 <= overlap < min(width, height):
        raise bad_arg(TITLE, f"tile overlap {overlap} must be at least 0 and below the tile size {width}x{height}")
    if not 0 < scale_factor <= 16:
        raise bad_arg(TITLE, f"scale factor must be in (0, 16], got {scale_factor}")
    init = flatten(ctx.decode_image(req.init_images[0]), ctx.option("img2img_background_color", "#ffffff"))
    image = init if name == "None" or ctx.upscale is None else ctx.upscale(init, name, scale_factor)
    if image.width < width or image.height < height:
        raise bad_arg(TITLE, f"the upscaled image ({image.width}x{image.height}) is smaller than a tile "
                             f"({width}x{height})")
    grid = split_grid(image, tile_w=width, tile_h=height, overlap=overlap)
    work = [tile[2] for _y, _h, row in grid.tiles for tile in row]
    batch_size, upscale_count = req.batch_size or 1, req.n_iter or 1
    batch_count = math.ceil(len(work) / batch_size)
    if batch_count * upscale_count * batch_size > MAX_TILES:
        raise bad_arg(TITLE, f"{len(work)} tiles × {upscale_count} would exceed {MAX_TILES} generations")
    seed = fixed_seed(req.seed, ctx)
    extra = {"SD upscale overlap": overlap, "SD upscale upscaler": name}
    subs = []
    for n in range(upscale_count):
        for i in range(batch_count):  # the next batch starts at processed.seed + 1
            d = Draft(req)
            d["init_images"] = [png_base64(t) for t in work[i * batch_size:(i + 1) * batch_size]]
            d["seed"], d["n_iter"], d["batch_size"] = seed + n + i, 1, batch_size
            subs.append(SubRequest(d.build(TITLE), extra))

    def combine(runs: Sequence[CellRun]) -> ScriptOutput:
        results = []
        for n in range(upscale_count):
            done = [im for run in runs[n * batch_count:(n + 1) * batch_count] for im in run.images]
            tiles = Grid([[y, h, [list(t) for t in row]] for y, h, row in grid.tiles], grid.tile_w, grid.tile_h,
                         grid.image_w, grid.image_h, grid.overlap)
            k = 0
            for _y, _h, row in tiles.tiles:
                for tile in row:
                    tile[2] = done[k] if k < len(done) else Image.new("RGB", (width, height))
                    k += 1
            results.append(combine_grid(tiles))
        first = runs[0].infotexts[0] if runs and runs[0].infotexts else ""
        return ScriptOutput(images=results, png_infotexts=[None] * len(results), infotexts=[first] * len(results),
                            seed=seed)

    return ScriptPlan(requests=subs, combine=combine, job_count=batch_count * upscale_count)

"""Prompt matrix (A1111 scripts/prompt_matrix.py): `a|b|c` → every combination of the optional parts after
the first, one image each, and a grid with the parts struck through where they are left out.

`script_args`: put_at_start, different_seeds, prompt_type ("positive"/"negative"), variations_delimiter
("comma"/"space"), margin_size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.a1111.grid_annotations import draw_prompt_matrix
from service.a1111.grids import image_grid
from service.a1111.scripts.base import CellRun, ScriptArg, ScriptOutput, ScriptPlan, SubRequest, positional
from service.a1111.scripts.context import ScriptContext, bad_arg, fixed_seed
from service.a1111.scripts.draft import Draft
from service.a1111.sdapi_models import GenerationRequest

TITLE = "Prompt matrix"
MAX_PARTS = 10  # 2**9 = 512 images; A1111 has no limit

ARGS = (
    ScriptArg("Put variable parts at start of prompt", False),
    ScriptArg("Use different seed for each picture", False),
    ScriptArg("Select prompt", "positive", choices=("positive", "negative")),
    ScriptArg("Select joining char", "comma", choices=("comma", "space")),
    ScriptArg("Grid margins (px)", 0, 0, 500, 2),
)


def combinations(prompt: str, put_at_start: bool, delimiter: str) -> list[str]:
    """Combination n keeps part k+1 when bit k of n is set; parts are stripped of spaces and commas."""
    parts = prompt.split("|")
    out = []
    for n in range(2 ** (len(parts) - 1)):
        selected = [text.strip().strip(",") for k, text in enumerate(parts[1:]) if n & (1 << k)]
        selected = selected + [parts[0]] if put_at_start else [parts[0]] + selected
        out.append(delimiter.join(selected))
    return out


def plan(req: GenerationRequest, args: Sequence[Any], ctx: ScriptContext) -> ScriptPlan:
    put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size = positional(args, ARGS)
    if prompt_type not in ("positive", "negative"):
        raise bad_arg(TITLE, f"Unknown prompt type {prompt_type}")
    if variations_delimiter not in ("comma", "space"):
        raise bad_arg(TITLE, f"Unknown variations delimiter {variations_delimiter}")
    field = "prompt" if prompt_type == "positive" else "negative_prompt"
    original = getattr(req, field) or ""
    parts = original.split("|")
    if len(parts) > MAX_PARTS:
        raise bad_arg(TITLE, f"at most {MAX_PARTS} parts ({2 ** (MAX_PARTS - 1)} images), got {len(parts)}")
    prompts = combinations(original, bool(put_at_start), ", " if variations_delimiter == "comma" else " ")
    base = Draft(req)
    seed, subseed = fixed_seed(base["seed"], ctx), fixed_seed(base["subseed"], ctx)
    # One process_images over a list of prompts in A1111: image i has prompt i, seed seed (+ i with
    # different_seeds) and subseed + i; each image's noise depends only on its own seeds, so one request each.
    subs = []
    for i, text in enumerate(prompts):
        d = Draft(req)
        d[field] = text
        d["seed"] = seed + (i if different_seeds else 0)
        d["subseed"] = subseed + i
        d["batch_size"], d["n_iter"] = 1, 1
        subs.append(SubRequest(d.build(TITLE)))

    def combine(runs: Sequence[CellRun]) -> ScriptOutput:
        images = [im for run in runs for im in run.images]
        infotexts = [t for run in runs for t in run.infotexts]
        out = ScriptOutput(images=list(images), png_infotexts=list(infotexts), infotexts=list(infotexts),
                           all_prompts=[p for run in runs for p in run.prompts],
                           all_negative_prompts=[p for run in runs for p in run.negative_prompts],
                           all_seeds=[s for run in runs for s in run.seeds],
                           all_subseeds=[s for run in runs for s in run.subseeds])
        if len(images) != len(prompts):  # interrupted: no grid to label
            return out
        background = ctx.option("grid_background_color", "#ffffff")
        grid = image_grid(images, rows=1 << ((len(parts) - 1) // 2), grid_background_color=background)
        grid = draw_prompt_matrix(grid, images[0].width, images[0].height, parts, int(margin_size or 0),
                                  active_color=ctx.option("grid_text_active_color", "#000000"),
                                  inactive_color=ctx.option("grid_text_inactive_color", "#999999"),
                                  background_color=background)
        out.images.insert(0, grid)
        out.png_infotexts.insert(0, None)
        out.infotexts.insert(0, infotexts[0])
        out.index_of_first_image = 1
        return out

    return ScriptPlan(requests=subs, combine=combine)

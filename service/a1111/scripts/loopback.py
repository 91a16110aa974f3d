"""Loopback (A1111 scripts/loopback.py), img2img only: each iteration's image is the next one's init image,
the seed goes up by one and the denoising strength moves from the request's toward the final one along a
curve.

`script_args`: loops, final_denoising_strength, denoising_curve ("Aggressive"/"Linear"/"Lazy"),
append_interrogation ("None"; "CLIP"/"DeepBooru" need an interrogator sdedge does not have: a 422).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from service.a1111.grids import image_grid
from service.a1111.scripts.base import CellRun, ScriptArg, ScriptOutput, ScriptPlan, SubRequest, positional
from service.a1111.scripts.context import ScriptContext, bad_arg, fixed_seed
from service.a1111.scripts.draft import Draft
from service.a1111.scripts.sd_upscale import png_base64
from service.a1111.sdapi_models import GenerationRequest

TITLE = "Loopback"
MAX_LOOPS = 32  # the UI slider's maximum

ARGS = (
    ScriptArg("Loops", 4, 1, 32, 1),
    ScriptArg("Final denoising strength", 0.5, 0, 1, 0.01),
    ScriptArg("Denoising strength curve", "Linear", choices=("Aggressive", "Linear", "Lazy")),
    ScriptArg("Append interrogated prompt at each iteration", "None", choices=("None", "CLIP", "DeepBooru")),
)


def denoising_strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """A1111's calculate_denoising_strength: the strength of iteration `loop` (0 is the request's)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        strength = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        strength = 1 - math.cos(progress * math.pi * 0.5)
    else:
        strength = progress
    return initial + (final - initial) * strength


def plan(req: GenerationRequest, args: Sequence[Any], ctx: ScriptContext) -> ScriptPlan:
    loops, final, curve, interrogation = positional(args, ARGS)
    loops, final = int(loops), float(final)
    if not 1 <= loops <= MAX_LOOPS:
        raise bad_arg(TITLE, f"loops must be between 1 and {MAX_LOOPS}, got {loops}")
    if not 0.0 <= final <= 1.0:
        raise bad_arg(TITLE, f"final denoising strength must be between 0 and 1, got {final}")
    if curve not in ("Aggressive", "Linear", "Lazy"):
        raise bad_arg(TITLE, f"unknown denoising curve {curve!r}")
    if interrogation != "None":
        raise bad_arg(TITLE, f"append_interrogation {interrogation!r} needs an interrogator, which sdedge does not have")
    batch_count = req.n_iter or 1
    initial = req.denoising_strength if req.denoising_strength is not None else 0.75
    seed = fixed_seed(req.seed, ctx)
    extra = {"Final denoising strength": final, "Denoising curve": curve}
    fill = req.inpainting_fill

    def request(i: int, seed: int, init: Any) -> SubRequest:
        d = Draft(req)
        d["seed"], d["n_iter"], d["batch_size"] = seed, 1, 1
        d["denoising_strength"] = denoising_strength(i, loops, initial, final, curve)
        if init is not None:
            d["init_images"] = [init]
            d["inpainting_fill"] = 1  # "original" after the first loop
        else:
            d["inpainting_fill"] = fill
        return SubRequest(d.build(TITLE), extra)

    first = request(0, seed, None)

    def follow(runs: Sequence[CellRun]) -> SubRequest | None:
        if len(runs) >= loops * batch_count:
            return None
        last = runs[-1]
        if not last.images:  # interrupted
            return None
        i = len(runs) % loops
        next_seed = last.seeds[0] + 1
        return request(i, next_seed, None if i == 0 else png_base64(last.images[0]))

    def combine(runs: Sequence[CellRun]) -> ScriptOutput:
        if batch_count == 1:
            history = [run.images[0] for run in runs if run.images]
        else:
            history = [runs[(n + 1) * loops - 1].images[0] for n in range(batch_count)
                       if len(runs) >= (n + 1) * loops and runs[(n + 1) * loops - 1].images]
        images, png = list(history), [run.infotexts[0] for run in runs if run.images]
        if batch_count > 1:
            png = [runs[(n + 1) * loops - 1].infotexts[0] for n in range(len(history))]
        if len(history) > 1 and ctx.option("return_grid", True):
            images.insert(0, image_grid(history, rows=1))
            png.insert(0, None)
        first_info = runs[0].infotexts[0] if runs and runs[0].infotexts else ""
        return ScriptOutput(images=images, png_infotexts=png, infotexts=[first_info] * len(images), seed=seed)

    return ScriptPlan(requests=[first], combine=combine, follow=follow, job_count=loops * batch_count)

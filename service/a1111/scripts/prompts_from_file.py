"""Prompts from file or textbox (A1111 scripts/prompts_from_file.py): one generation per non-empty line; a
line containing `--` is read as command-line options (`--prompt "a cat" --steps 10 --seed 5`), any other
line is the prompt.

`script_args`: checkbox_iterate, checkbox_iterate_batch, prompt_position ("start"/"end"), prompt_txt.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import Any

from engine.samplers import SAMPLERS
from service.a1111.scripts.base import CellRun, ScriptArg, ScriptOutput, ScriptPlan, SubRequest, positional
from service.a1111.scripts.context import ScriptContext, bad_arg
from service.a1111.scripts.draft import Draft
from service.a1111.sdapi_models import GenerationRequest

TITLE = "Prompts from file or textbox"
MAX_LINES = 1000

ARGS = (
    ScriptArg("Iterate seed every line", False),
    ScriptArg("Use same random seed for all lines", False),
    ScriptArg("Insert prompts at the", "start", choices=("start", "end")),
    ScriptArg("List of prompt inputs", ""),
)


def _bool(tag: str) -> bool:
    return tag == "true"


# A1111's prompt_tags. Those marked None are read and dropped: output paths (a request must not choose where
# the server writes), the display prompt, sampler_index (unused since v1.6) and the saving flags, which the
# API overrides with save_images anyway.
TAGS: dict[str, Callable[[str], Any] | None] = {
    "sd_model": str, "outpath_samples": None, "outpath_grids": None, "prompt_for_display": None,
    "prompt": str, "negative_prompt": str, "styles": str, "seed": int, "subseed_strength": float,
    "subseed": int, "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_index": None,
    "sampler_name": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float, "width": int,
    "height": int, "restore_faces": _bool, "tiling": _bool, "do_not_save_samples": None,
    "do_not_save_grid": None,
}
DROPPED = object()


def cmdargs(line: str, find_checkpoint: Callable[[str], str | None] = lambda name: None) -> dict[str, Any]:
    """A1111's `cmdargs`: `--tag value` pairs; a prompt runs to the next `--`. Raises ValueError on a line
    A1111's asserts refuse (the caller then takes the whole line as the prompt, as A1111 does)."""
    args = shlex.split(line)
    pos, res = 0, {}
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            pos += 1
            prompt = args[pos]
            pos += 1
            while pos < len(args) and not args[pos].startswith("--"):
                prompt += " " + args[pos]
                pos += 1
            res[tag] = prompt
            continue
        if tag not in TAGS:
            raise ValueError(f"unknown commandline option: {arg}")
        func, val = TAGS[tag], args[pos + 1]
        if tag == "sampler_name":  # samplers_map: a name in any case, else None
            val = next((name for name in SAMPLERS if name.lower() == val.lower()), None)
        if tag == "sd_model":
            title = find_checkpoint(val)
            if title is None:
                raise ValueError(f"Unknown checkpoint: {val}")
            res[tag] = title
        else:
            res[tag] = DROPPED if func is None else (func(val) if val is not None else None)
        pos += 2
    return {k: v for k, v in res.items() if v is not DROPPED}


def parse_lines(text: str, find_checkpoint: Callable[[str], str | None] = lambda name: None) -> list[dict]:
    jobs = []
    for line in (x.strip() for x in (text or "").splitlines()):
        if not line:
            continue
        args = {"prompt": line}
        if "--" in line:
            try:
                args = cmdargs(line, find_checkpoint)
            except ValueError:
                args = {"prompt": line}
        jobs.append(args)
    return jobs


def plan(req: GenerationRequest, args: Sequence[Any], ctx: ScriptContext) -> ScriptPlan:
    iterate, iterate_batch, position, text = positional(args, ARGS)
    if not isinstance(text, str | None):
        raise bad_arg(TITLE, f"the list of prompt inputs (script arg 4) must be text, got {type(text).__name__}")
    jobs = parse_lines(text or "", ctx.find_checkpoint)
    if not jobs:
        raise bad_arg(TITLE, "no prompts: the list of prompt inputs (script arg 4) is empty")
    if len(jobs) > MAX_LINES:
        raise bad_arg(TITLE, f"at most {MAX_LINES} lines")
    seed = req.seed if req.seed is not None else -1
    if (iterate or iterate_batch) and seed == -1:
        seed = ctx.random_seed()
    subs = []
    for job in jobs:
        d = Draft(req)
        d["seed"] = seed
        for key, value in job.items():
            if key == "sd_model":
                d.overrides["sd_model_checkpoint"] = value
            elif key == "styles":  # A1111 sets the string itself; its letters are then looked up as style names
                d["styles"] = list(value)
            else:
                d[key] = value
        for key in ("prompt", "negative_prompt"):
            if job.get(key) and getattr(req, key):
                d[key] = f"{job[key]} {getattr(req, key)}" if position == "start" else f"{getattr(req, key)} {job[key]}"
        subs.append(SubRequest(d.build(TITLE)))
        if iterate:
            seed = seed + (req.batch_size or 1) * (req.n_iter or 1)

    def combine(runs: Sequence[CellRun]) -> ScriptOutput:
        infotexts = [t for run in runs for t in run.infotexts]
        return ScriptOutput(images=[im for run in runs for im in run.images], png_infotexts=list(infotexts),
                            infotexts=infotexts, all_prompts=[p for run in runs for p in run.prompts],
                            seed=seed, all_seeds=[seed], all_negative_prompts=[req.negative_prompt or ""],
                            all_subseeds=[req.subseed if req.subseed is not None else -1],
                            info={"prompt": req.prompt or "", "negative_prompt": req.negative_prompt or ""})

    return ScriptPlan(requests=subs, combine=combine)

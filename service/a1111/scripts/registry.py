"""The scripts of each tab as A1111 v1.10.1 has them built in (modules/scripts.py: ScriptRunner), and what the
API does with `script_name`, `script_args` and `alwayson_scripts` (modules/api/api.py: get_selectable_script,
init_script_args, get_scripts_list, get_script_info).

A1111's order of a tab's scripts is its load order: the files of scripts/ by name, then the built-in
extensions (sorted by folder name), then modules/processing_scripts/. Always-on scripts run on every request
(with their defaults when the request does not name them); the built-in UI ones, Refiner, Seed and Sampler,
are `setup_for_ui_only`: under the API their setup is skipped, so their args are accepted and do nothing, and
the request's own fields (refiner_checkpoint, seed, subseed, steps, sampler_name, ...) decide. "Extra options"
reads one arg per setting named in option extra_options_txt2img / extra_options_img2img and puts each into
override_settings unless the request sets that key (its before_process).

Selectable scripts sdedge does not implement (img2img alternative test, outpainting mk2, poor man's
outpainting) are not listed, so naming one is A1111's own "not found" 422.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.samplers import SAMPLERS
from engine.schedules import SCHEDULERS
from service.a1111.errors import InvalidRequest
from service.a1111.scripts import loopback, prompt_matrix, prompts_from_file, sd_upscale, xyz_grid
from service.a1111.scripts.base import ScriptArg, ScriptPlan
from service.a1111.scripts.context import ScriptContext
from service.a1111.sdapi_models import GenerationRequest


class ScriptNotFound(InvalidRequest):
    """A1111's `HTTPException(422, "Script '<name>' not found")`."""

    a1111_error = "HTTPException"

    def __init__(self, name: str):
        super().__init__("script_name", "")
        self.detail = f"Script '{name}' not found"
        self.args = (self.detail,)


class SelectableInAlwaysOn(InvalidRequest):
    a1111_error = "HTTPException"

    def __init__(self):
        super().__init__("alwayson_scripts", "")
        self.detail = "Cannot have a selectable script in the always on scripts params"
        self.args = (self.detail,)


Planner = Callable[[GenerationRequest, Sequence[Any], ScriptContext], ScriptPlan]


@dataclass(frozen=True)
class Script:
    title: str
    args: Callable[[ScriptContext], tuple[ScriptArg, ...]] | None  # None: no UI (not listed by the API)
    alwayson: bool = False
    planner: Planner | None = None  # selectable scripts sdedge runs
    api_name: str | None = None  # a class attribute `name` A1111 keeps as is (Hypertile)

    @property
    def name(self) -> str | None:
        return self.api_name or (self.title.lower() if self.args is not None else None)


def _const(*args: ScriptArg) -> Callable[[ScriptContext], tuple[ScriptArg, ...]]:
    return lambda ctx: args


def _refiner(ctx: ScriptContext) -> tuple[ScriptArg, ...]:
    return (ScriptArg("Refiner", False), ScriptArg("Checkpoint", "", choices=tuple(ctx.checkpoints)),
            ScriptArg("Switch at", 0.8, 0.01, 1.0, 0.01))


SEED_ARGS = (ScriptArg("Seed", -1), ScriptArg("Extra", False), ScriptArg("Variation seed", -1),
             ScriptArg("Variation strength", 0.0, 0, 1, 0.01), ScriptArg("Resize seed from width", 0, 0, 2048, 8),
             ScriptArg("Resize seed from height", 0, 0, 2048, 8))


def _sampler(ctx: ScriptContext) -> tuple[ScriptArg, ...]:
    samplers = tuple(n for n in SAMPLERS if n not in set(ctx.option("hide_samplers", [])))
    schedulers = tuple(s.label for s in SCHEDULERS.values())
    return (ScriptArg("Sampling steps", 20, 1, 150, 1), ScriptArg("Sampling method", samplers[0], choices=samplers),
            ScriptArg("Schedule type", schedulers[0], choices=schedulers))


def extra_option_keys(ctx: ScriptContext) -> list[str]:
    return list(ctx.option("extra_options_img2img" if ctx.is_img2img else "extra_options_txt2img", []))


def _extra_options(ctx: ScriptContext) -> tuple[ScriptArg, ...]:
    return tuple(ScriptArg(key, ctx.options.get(key)) for key in extra_option_keys(ctx))


def _soft_inpainting(ctx: ScriptContext) -> tuple[ScriptArg, ...]:
    return (ScriptArg("Soft inpainting", False), ScriptArg("Schedule bias", 1.0, 0, 8, 0.1),
            ScriptArg("Preservation strength", 0.5, 0, 8, 0.05), ScriptArg("Transition contrast boost", 4.0, 1, 32, 0.5),
            ScriptArg("Mask influence", 0.0, 0, 1, 0.05), ScriptArg("Difference threshold", 0.5, 0, 8, 0.25),
            ScriptArg("Difference contrast", 2.0, 0, 8, 0.25))


PROMPT_MATRIX = Script("Prompt matrix", _const(*prompt_matrix.ARGS), planner=prompt_matrix.plan)
PROMPTS_FROM_FILE = Script("Prompts from file or textbox", _const(*prompts_from_file.ARGS),
                           planner=prompts_from_file.plan)
XYZ = Script("X/Y/Z plot", lambda ctx: xyz_grid.script_args(ctx.is_img2img), planner=xyz_grid.plan)
EXTRA_OPTIONS = Script("Extra options", _extra_options, alwayson=True)
HYPERTILE = Script("Hypertile", None, alwayson=True, api_name="Hypertile")
COMMENTS = Script("Comments", None, alwayson=True)
REFINER = Script("Refiner", _refiner, alwayson=True)
SAMPLER = Script("Sampler", _sampler, alwayson=True)
SEED = Script("Seed", _const(*SEED_ARGS), alwayson=True)

TXT2IMG: tuple[Script, ...] = (PROMPT_MATRIX, PROMPTS_FROM_FILE, XYZ, EXTRA_OPTIONS, HYPERTILE, COMMENTS, REFINER,
                               SAMPLER, SEED)
IMG2IMG: tuple[Script, ...] = (
    Script("Loopback", _const(*loopback.ARGS), planner=loopback.plan),
    PROMPT_MATRIX, PROMPTS_FROM_FILE,
    Script("SD upscale", sd_upscale.args, planner=sd_upscale.plan),
    XYZ, EXTRA_OPTIONS, HYPERTILE,
    Script("Soft Inpainting", _soft_inpainting, alwayson=True),
    COMMENTS, REFINER, SAMPLER, SEED,
)


def scripts_of(is_img2img: bool) -> tuple[Script, ...]:
    return IMG2IMG if is_img2img else TXT2IMG


def scripts_list() -> dict[str, list[str]]:
    """GET /sdapi/v1/scripts: the names of the scripts that have a name (a UI, or a `name` attribute)."""
    return {tab: [s.name for s in scripts_of(img) if s.name is not None]
            for tab, img in (("txt2img", False), ("img2img", True))}


def script_info(contexts: Mapping[bool, ScriptContext]) -> list[dict[str, Any]]:
    """GET /sdapi/v1/script-info: txt2img's scripts with a UI, then img2img's."""
    out = []
    for is_img2img in (False, True):
        ctx = contexts[is_img2img]
        for s in scripts_of(is_img2img):
            if s.args is None:
                continue
            out.append({"name": s.name, "is_alwayson": s.alwayson, "is_img2img": is_img2img,
                        "args": [a.info() for a in s.args(ctx)]})
    return out


def _find(name: str, scripts: Sequence[Script]) -> Script:
    """`script_name_to_index`: the title, case-insensitively."""
    for s in scripts:
        if s.title.lower() == str(name).lower():
            return s
    raise ScriptNotFound(name)


def selectable(name: str | None, is_img2img: bool) -> Script | None:
    """The request's `script_name` (None or "" for none); unknown is A1111's 422."""
    if name is None or name == "":
        return None
    return _find(name, [s for s in scripts_of(is_img2img) if not s.alwayson])


def alwayson_overrides(req: GenerationRequest, ctx: ScriptContext) -> dict[str, Any]:
    """Check `alwayson_scripts` as A1111's init_script_args does (unknown title or a selectable one: 422) and
    return the override_settings the always-on scripts that work under the API add: Extra options' args."""
    requested = req.alwayson_scripts or {}
    if not isinstance(requested, Mapping):
        raise InvalidRequest("alwayson_scripts", "must be an object of {script title: {\"args\": [...]}}")
    scripts = scripts_of(ctx.is_img2img)
    given: dict[str, list] = {}
    for name, value in requested.items():
        script = _find(name, scripts)
        if not script.alwayson:
            raise SelectableInAlwaysOn()
        args = value.get("args") if isinstance(value, Mapping) else None
        if args is not None and not isinstance(args, list):
            raise InvalidRequest("alwayson_scripts", f"{name}: args must be a list")
        given[script.title] = list(args or [])
    overrides: dict[str, Any] = {}
    keys = extra_option_keys(ctx)
    for key, value in zip(keys, given.get(EXTRA_OPTIONS.title, []), strict=False):
        if key not in (req.override_settings or {}):
            overrides[key] = value
    return overrides

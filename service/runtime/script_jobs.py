"""A request with `script_name`: the script's sub-requests planned at submit, run one after another inside ONE
job (one queue slot, one /progress, one interrupt, as A1111 runs a script inside one generation task), and
the script's combiner building the response (A1111 modules/api/api.py: text2imgapi with a selectable script:
`scripts.run(p, *script_args)` instead of process_images).

Each sub-request is planned exactly as a request of its own (service/runtime/generate.py: prepare), so a cell
of an X/Y/Z plot gives the image and infotext the same request sent alone gives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from engine.backend import release_memory
from engine.pipeline import StepEvent
from service.a1111 import saving
from service.a1111.encode import encode_image, to_base64
from service.a1111.errors import InvalidRequest
from service.a1111.infotext import create_infotext, generation_parameters
from service.a1111.job_options import JobOptions
from service.a1111.results import build_response
from service.a1111.scripts.base import CellRun, ScriptOutput, SubRequest
from service.a1111.scripts.context import ScriptContext
from service.a1111.scripts.registry import Script, alwayson_overrides, selectable
from service.a1111.sdapi_models import GenerationRequest, Img2ImgRequest
from service.a1111.translate import _image
from service.runtime.generate import Generation, enqueue, job_options, prepare
from service.runtime.jobs import Job, new_task_id
from service.runtime.script_saving import cell_save, save_cell, save_script_outputs
from service.runtime.state import ServerState


def is_img2img(req: GenerationRequest) -> bool:
    return isinstance(req, Img2ImgRequest)


def selectable_script(req: GenerationRequest) -> Script | None:
    return selectable(getattr(req, "script_name", None), is_img2img(req))


def context(state: ServerState, img2img: bool, options: JobOptions | None = None) -> ScriptContext:
    snapshot = dict(state.options.snapshot())
    job = options or JobOptions.from_mapping(snapshot)
    registry = state.upscalers

    def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
        upscaler = registry.get(name) if registry is not None else None
        return image if upscaler is None else upscaler.upscale(image, scale)

    return ScriptContext(
        is_img2img=img2img, options=snapshot,
        find_checkpoint=lambda name: getattr(state.models.find(str(name)), "title", None),
        upscalers=registry.names() if registry is not None else ("None", "Lanczos", "Nearest"),
        decode_image=lambda value: _image("init_images[0]", value, job),  # the request's image limits
        upscale=upscale,
        checkpoints=sorted((e.title for e in state.models.entries()), key=str.casefold),
    )


def with_alwayson(state: ServerState, req: GenerationRequest) -> GenerationRequest:
    """`alwayson_scripts` checked (unknown or selectable titles: A1111's 422) and Extra options' args added to
    override_settings."""
    if not req.alwayson_scripts:
        return req
    overrides = alwayson_overrides(req, context(state, is_img2img(req)))
    if not overrides:
        return req
    return req.model_copy(update={"override_settings": {**(req.override_settings or {}), **overrides}})


def _with_extras(params: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """A script's extra_generation_params go after the core entries, before Version (A1111 create_infotext)."""
    if not extras:
        return params
    out = {k: v for k, v in params.items() if k != "Version"}
    out.update({k: v for k, v in extras.items() if k not in out})
    if "Version" in params:
        out["Version"] = params["Version"]
    return out


def cell_run(generation: Generation, sub: SubRequest, result, index: int) -> CellRun:
    plan, entry = generation.reported_plan(), generation.entry  # with `TI hashes`

    def infotext(i: int, more: dict[str, Any] | None = None) -> str:
        params = generation_parameters(plan, i, entry.name, entry.short_hash, result)
        return create_infotext(plan.prompts[i], plan.negative_prompts[i],
                               _with_extras(params, {**sub.extra_params, **(more or {})}))

    images = list(result.images)
    return CellRun(sub=sub, images=images, infotexts=[infotext(i) for i in range(len(images))],
                   prompts=list(plan.prompts[:len(images)]), negative_prompts=list(plan.negative_prompts[:len(images)]),
                   seeds=list(plan.seeds[:len(images)]), subseeds=list(plan.subseeds[:len(images)]),
                   infotext_with=lambda more, i: infotext(i, more), index=index)


@dataclass
class ScriptResult:
    """The job's result: the runs, and whether it was interrupted (the doors report it as for a generation)."""

    runs: list[CellRun]
    interrupted: bool = False


class ScriptGeneration:
    """A script's work for the worker: its planned cells, later ones planned on the worker (loopback)."""

    def __init__(self, state: ServerState, req: GenerationRequest, script: Script, parameters: dict[str, Any]):
        self.state, self.req, self.script, self.parameters = state, req, script, parameters
        self.options = job_options(state, req.override_settings)
        ctx = context(state, is_img2img(req), self.options)
        try:
            self.plan = script.planner(req, list(req.script_args or []), ctx)  # type: ignore[misc]
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # An argument of the wrong kind (a dict where A1111 takes text, ...): A1111's run() raises, a 500.
            raise InvalidRequest("script_args", f"{script.title}: {type(exc).__name__}: {exc}") from None
        # What the request saves; the cells save what A1111's script lets them (service/runtime/script_saving.py),
        # after their run, with the script's infotexts.
        self.save = saving.save_request(getattr(req, "save_images", False), req.do_not_save_samples,
                                        req.do_not_save_grid)
        self.cell_save = cell_save(script.title, self.save)
        self.cells = [self._cell(sub) for sub in self.plan.requests]  # 4xx before queueing
        self.output: ScriptOutput | None = None
        self.warnings: list[str] = []
        self.kind = "img2img" if is_img2img(req) else "txt2img"
        self.timestamp = time.strftime("%Y%m%d%H%M%S")
        self.runs: list[CellRun] = []
        self.generations: list[Generation] = []
        self.results: list[Any] = []

    def _cell(self, sub: SubRequest) -> Generation:
        return replace(prepare(self.state, sub.request)[1], save=saving.SaveRequest(samples=False, grid=False))

    def job_count(self) -> int:
        if self.plan.job_count is not None:
            return self.plan.job_count
        return sum(c.plan.n_iter * (2 if c.plan.hires else 1) for c in self.cells)

    def run(self, job: Job) -> ScriptResult:
        total = self.job_count()
        job.progress.job_count = total
        done = 0

        def hook(offset: int) -> Callable[[StepEvent], None]:
            def on_step(event: StepEvent) -> None:
                p = job.progress
                p.job_no, p.job_count = offset + event.job_no, total
                p.sampling_step, p.sampling_steps = event.step, event.steps
                p.latents = event.latents
                job.notify()
            return on_step

        pending = list(zip(self.plan.requests, self.cells, strict=True))
        while pending:
            sub, generation = pending.pop(0)
            if job.interrupted:
                break  # A1111: cells after an interrupt return nothing
            result = generation.run(job, on_step=hook(done))
            done += generation.plan.n_iter * (2 if generation.plan.hires else 1)
            self.generations.append(generation)
            self.results.append(result)
            self.runs.append(cell_run(generation, sub, result, len(self.runs)))
            self.warnings += save_cell(generation, self.runs[-1], result, self.cell_save)
            if not pending and self.plan.follow is not None and not job.interrupted:
                nxt = self.plan.follow(self.runs)
                if nxt is not None:
                    pending.append((nxt, self._cell(nxt)))
        release_memory()
        self.output = self.plan.combine(self.runs)
        if self.generations and (self.save.samples or self.save.grid):
            output = self.output
            seed = output.seed if output.seed is not None else (self.runs[0].seeds[0] if self.runs[0].seeds else None)
            template = self.generations[min(output.template, len(self.generations) - 1)]
            self.warnings += save_script_outputs(self.script.title, output, template, self.save,
                                                 self.req.prompt or "", seed)
        return ScriptResult(self.runs, job.interrupted or any(r.interrupted for r in self.results))

    def finish(self, result: ScriptResult, as_bytes: bool = False) -> dict[str, Any]:
        output = self.output if self.output is not None else self.plan.combine(result.runs)
        return script_response(self, output, as_bytes=as_bytes)


def script_response(sg: ScriptGeneration, output: ScriptOutput, as_bytes: bool = False) -> dict[str, Any]:
    """The sdapi response of a script: its images (each PNG with the infotext A1111's image carries, grids
    none), and `info` as the template run's with the fields the script sets (A1111's Processed of the script)."""
    opts = sg.options
    send = bool(sg.req.send_images)
    if sg.generations:
        t = min(output.template, len(sg.generations) - 1)
        template = sg.generations[t]
        base = build_response(template.reported_plan(), sg.results[t], template.entry, opts, sg.parameters, False, sg.timestamp)
        info = json.loads(base["info"])
    else:
        info = {}  # nothing ran (interrupted before the first cell)
    info.update(
        infotexts=output.infotexts, index_of_first_image=output.index_of_first_image,
        **{k: v for k, v in (("all_prompts", output.all_prompts), ("all_seeds", output.all_seeds),
                             ("all_negative_prompts", output.all_negative_prompts),
                             ("all_subseeds", output.all_subseeds), ("seed", output.seed)) if v is not None},
        **output.info,
    )
    if sg.warnings:  # files that could not be saved, as for a single generation
        info["sdedge_warnings"] = [*info.get("sdedge_warnings", []), *sg.warnings]
    images, sources = [], []
    if send:
        for i, (image, infotext) in enumerate(zip(output.images, output.png_infotexts, strict=True)):
            data = encode_image(image, opts.samples_format, infotext if opts.enable_pnginfo else None,
                                opts.jpeg_quality, opts.webp_lossless)
            images.append(data if as_bytes else to_base64(data))
            sources.append(i - output.index_of_first_image)  # the grid(s) before the cells: negative
    response = {"images": images, "parameters": sg.parameters, "info": json.dumps(info, default=lambda _: None)}
    if as_bytes:
        response["image_sources"] = sources
    return response


def submit_script(state: ServerState, req: GenerationRequest, script: Script, parameters: dict[str, Any],
                  listener=None) -> tuple[Job, Callable[..., dict[str, Any]]]:
    parameters = dict(parameters)
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        parameters.update(init_images=None, mask=None)  # as for any img2img request (A1111 img2imgapi)
    sg = ScriptGeneration(state, req, script, parameters)
    job = enqueue(state, Job(kind=sg.kind, run=sg.run, id=req.force_task_id or new_task_id(sg.kind)), listener)
    return job, sg.finish

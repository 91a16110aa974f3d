"""The one generation path both front doors take: sdapi request → plan → queued job → sdapi response.

REST (service/http/routes/generation.py) and gRPC (service/rpc/server.py) differ only in how they wait for the job
and how they ship the response; everything a request means is decided here and in service/a1111/translate.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from engine.backend import release_memory
from engine.lora import NetworkError
from engine.pipeline import GenerationResult, StepEvent
from engine.plan import GenerationPlan
from service.a1111 import saving
from service.a1111.errors import InvalidRequest, ModelUnavailable, QueueBusy, ShuttingDown
from service.a1111.infotext_request import Request, apply_infotext
from service.a1111.job_options import JobOptions
from service.a1111.results import build_response, collect_outputs
from service.a1111.sdapi_models import GenerationRequest, Img2ImgRequest
from service.a1111.styles import styles_of
from service.a1111.translate import (
    hires_checkpoint,
    plan_img2img,
    plan_txt2img,
    refiner_checkpoint,
    with_refiner,
)
from service.runtime import admission, face_restoration
from service.runtime.embeddings import ti_hashes
from service.runtime.jobs import Job, QueueClosed, QueueFull, new_task_id
from service.runtime.loras import pipeline_with_networks
from service.runtime.models import ModelEntry
from service.runtime.options import InvalidOption
from service.runtime.state import NoModelLoaded, ServerState
from service.runtime.vae import VaeChoice
from service.runtime.workers import entries_of, job_resources, mode_of

log = logging.getLogger(__name__)

Listener = Callable[[Job], None]
Finish = Callable[..., dict[str, Any]]


def job_options(state: ServerState, overrides: dict | None) -> JobOptions:
    try:
        return state.job_options(overrides)
    except KeyError as exc:
        raise InvalidRequest("override_settings", f"unknown option {exc.args[0]!r}") from None
    except InvalidOption as exc:
        raise InvalidRequest("override_settings", str(exc)) from None


def checkpoint(state: ServerState, options: JobOptions) -> ModelEntry:
    try:
        return state.checkpoint_for(options)
    except NoModelLoaded as exc:
        raise ModelUnavailable(str(exc)) from None


def progress_hook(job: Job) -> Callable[[StepEvent], None]:
    def on_step(event: StepEvent) -> None:
        p = job.progress
        p.job_no, p.job_count = event.job_no, event.job_count
        p.sampling_step, p.sampling_steps = event.step, event.steps
        p.latents = event.latents
        job.notify()

    return on_step


def enqueue(state: ServerState, job: Job, listener: Listener | None = None) -> Job:
    # The listener is attached before the job can start, so it sees every step.
    if listener is not None:
        job.listeners.append(listener)
    try:
        return state.queue.submit(job)
    except QueueClosed as exc:
        raise ShuttingDown(str(exc)) from None
    except QueueFull as exc:
        raise QueueBusy(str(exc)) from None


@dataclass(frozen=True)
class Generation:
    """A request planned once, at submit time: the worker runs its plan, `finish` builds its response."""

    state: ServerState
    req: GenerationRequest
    plan: GenerationPlan
    entry: ModelEntry
    hires: ModelEntry | None  # hr_checkpoint_name's checkpoint, when not the job's own
    options: JobOptions  # built once at submit: server options + the request's override_settings
    parameters: dict[str, Any]
    needed: int  # admission's estimate of the job's memory
    timestamp: str
    network_errors: list[str] = field(default_factory=list, compare=False)  # LoRAs that failed to apply
    vae: VaeChoice | None = None  # a separate VAE file the checkpoint runs with (sd_vae), None: its own
    hires_vae: VaeChoice | None = None  # the same for the hires checkpoint
    kind: str = "txt2img"
    save: saving.SaveRequest = saving.SaveRequest(samples=False, grid=False)
    # Filled by `run` on the worker for `finish`: the job's outputs (grid included) and saving's warnings.
    notes: dict[str, Any] = field(default_factory=dict, compare=False)
    refiner: ModelEntry | None = None  # refiner_checkpoint's checkpoint, when not the job's own

    def run(self, job: Job, on_step: Callable[[StepEvent], None] | None = None) -> GenerationResult:
        """On the worker; with batching on, compatible waiting jobs join this one (service/runtime/batching.py).
        A script's cells pass their own `on_step` (the job's progress counts the whole script) and run alone."""
        if self.state.batcher is not None and on_step is None:
            return self.state.batcher.run(self, job, progress_hook)
        return self.run_alone(job, on_step)

    def run_alone(self, job: Job, on_step: Callable[[StepEvent], None] | None = None) -> GenerationResult:
        """On the worker: model switches happen in queue order; each pipeline resolves the plan's schedules.
        With several workers the job's checkpoints, their configuration and its memory are held meanwhile
        (service/runtime/workers.py)."""
        with job_resources(self.state, entries_of(self), mode_of(self), self.needed, job):
            return self._run_alone(job, on_step)

    def _run_alone(self, job: Job, on_step: Callable[[StepEvent], None] | None) -> GenerationResult:
        if self.hires is None:
            pipeline, hires_pipeline = self.state.pipeline_for(self.entry), None
        else:
            pipeline, hires_pipeline = self.state.hires_pipelines_for(self.entry, self.hires)
            self.state.vaes.apply(hires_pipeline, self.hires_vae)
        self.state.vaes.apply(pipeline, self.vae)  # A1111 loads the VAE with the model (sd_vae.reload_vae_weights)
        # The refiner is held for this job only, like a hires checkpoint (A1111 reloads the job's model after).
        refiner_pipeline = None if self.refiner is None else self.state.hires_pipelines_for(self.entry, self.refiner)[1]
        admission.wait_for_memory(self.needed)  # fits the budget; waits while other processes hold the memory
        plan = self.plan
        pipeline, hires_pipeline = self._with_networks(pipeline, hires_pipeline)
        self.note_embeddings(pipeline, hires_pipeline, refiner_pipeline)
        if on_step is None:
            on_step = progress_hook(job)
            job.progress.job_count = plan.n_iter * (2 if plan.hires else 1)  # hires: A1111 counts both passes
        on_step = self.state.metrics.timed_steps(on_step)
        try:
            if plan.img2img is not None:
                result = pipeline.img2img(plan, on_step=on_step, should_stop=job.should_stop,
                                          refiner_pipeline=refiner_pipeline)
            else:
                result = pipeline.txt2img(plan, on_step=on_step, should_stop=job.should_stop,
                                          hires_pipeline=hires_pipeline, refiner_pipeline=refiner_pipeline)
        finally:
            release_memory()  # a large job's freed buffers go back to the OS
        self.state.metrics.images.inc(len(result.images))
        if self.req.override_settings_restore_afterwards is False:
            self.state.keep_overrides(self.req.override_settings, self.entry)
        self.save_images(result)
        return result

    def _with_networks(self, pipeline, hires_pipeline):
        """The passes' pipelines over LoRA-merged sessions (each pass its own prompt's networks). A network that
        cannot be applied leaves that pass on the base model and is reported (A1111: `Networks with errors`)."""
        plan = self.plan
        try:
            first = pipeline_with_networks(pipeline, plan.networks, self.state.loras)
        except (NetworkError, OSError) as exc:
            log.error("LoRA: %s", exc)
            self.network_errors.append(f"Networks with errors: {exc}")
            first = pipeline
        if plan.hires is None or (hires_pipeline is None and plan.hires.networks == plan.networks):
            return first, hires_pipeline
        try:
            second = pipeline_with_networks(hires_pipeline or pipeline, plan.hires.networks, self.state.loras)
        except (NetworkError, OSError) as exc:
            log.error("LoRA (hires pass): %s", exc)
            self.network_errors.append(f"Networks with errors: {exc}")
            second = hires_pipeline
        return first, second

    def note_embeddings(self, pipeline, hires_pipeline=None, refiner_pipeline=None) -> None:
        """On the worker, before sampling: the passes' models get the current embeddings (files re-read if their
        folder changed, A1111 modules/processing.py: process_images_inner) and `TI hashes` is noted for the
        response and the saved images."""
        registry = self.state.embeddings
        registry.prepare((pipeline, hires_pipeline, refiner_pipeline))
        if self.options.textual_inversion_add_hashes_to_infotext:
            self.notes["ti_hashes"] = ti_hashes(registry, self.plan, pipeline, hires_pipeline,
                                                self.options.lora_bundled_ti_to_infotext)

    def reported_plan(self) -> GenerationPlan:
        """The plan with what only the worker learns (`TI hashes`) in its report."""
        found = self.notes.get("ti_hashes")
        return replace(self.plan, report=replace(self.plan.report, ti_hashes=found)) if found else self.plan

    def outputs(self, result: GenerationResult):
        """The images of the response, the grid among them when A1111 makes one (computed once per result)."""
        cached = self.notes.get("outputs")
        if cached is not None and cached[0] is result:
            return cached[1]
        outputs = collect_outputs(self.reported_plan(), result, self.entry, self.options,
                                  grid_wanted=self.save.grid)
        self.notes["outputs"] = (result, outputs)
        return outputs

    def save_images(self, result: GenerationResult) -> None:
        """On the worker, once the images exist (A1111 saves inside process_images)."""
        if not (self.save.samples or self.save.grid):
            return
        styles = styles_of(self.state).styles
        names = saving.job_names(
            self.plan, self.entry.name, self.entry.short_hash, self.req.prompt or "", self.req.negative_prompt or "",
            self.timestamp, [s.prompt or "" for name in self.plan.report.styles if (s := styles.get(name))],
            self.options.directories_max_prompt_words)
        _, warnings = saving.save_outputs(self.outputs(result), names, self.options, self.state.config.data_dir,
                                          self.kind, self.save, result, interrupted=result.interrupted)
        self.notes["warnings"] = warnings

    def finish(self, result: GenerationResult, as_bytes: bool = False) -> dict[str, Any]:
        plan = self.reported_plan()
        if self.network_errors:
            plan = replace(plan, report=replace(plan.report,
                                                comments=plan.report.comments + tuple(self.network_errors)))
        return build_response(plan, result, self.entry, self.options, self.parameters,
                              bool(self.req.send_images), self.timestamp, as_bytes=as_bytes,
                              outputs=self.outputs(result), warnings=self.notes.get("warnings"))


def submit(state: ServerState, req: GenerationRequest, listener: Listener | None = None) -> tuple[Job, Finish]:
    """Validate and plan a txt2img or img2img request once (a bad request is refused before it queues), queue
    it, and return the job with `finish(result, as_bytes=False)`, which builds the sdapi response.
    A `script_name` runs the script instead (service/runtime/script_jobs.py), in one job too."""
    from service.runtime import script_jobs  # it plans its cells with `prepare` below

    req = with_infotext(state, req)
    parameters = req.model_dump()
    script = script_jobs.selectable_script(req)  # unknown: A1111's 422, before the always-on check as A1111
    req = script_jobs.with_alwayson(state, req)
    if script is not None:
        return script_jobs.submit_script(state, req, script, parameters, listener)
    kind, generation = prepare(state, req, parameters)
    job = enqueue(state, Job(kind=kind, run=generation.run, id=req.force_task_id or new_task_id(kind),
                             payload=generation), listener)
    return job, generation.finish


def prepare(state: ServerState, req: GenerationRequest, parameters: dict[str, Any] | None = None,
            ) -> tuple[str, Generation]:
    """A request planned (validated, images decoded, memory admitted) into the Generation a worker runs."""
    options = job_options(state, req.override_settings)
    entry = checkpoint(state, options)
    parameters = req.model_dump() if parameters is None else dict(parameters)
    hires = None
    if isinstance(req, Img2ImgRequest):
        kind, plan = "img2img", plan_img2img(req, options, entry.edit_model, styles_of(state), loras=state.loras)
        if not req.include_init_images:
            parameters.update(init_images=None, mask=None)
    else:
        hires = hires_checkpoint(req, state.models, entry)
        kind, plan = "txt2img", plan_txt2img(req, options, state.upscalers, styles_of(state), hires,
                                             loras=state.loras)
    refiner = refiner_checkpoint(req, state.models, entry)
    plan = with_refiner(plan, req, options, refiner)
    plan = face_restoration.attach(getattr(state, "face_restorers", None), plan)
    needed = admission.check(state, entry, plan)  # 413 if it can never fit the memory budget
    vae = vae_choice(state, options, entry)
    plan = replace(plan, report=replace(plan.report, vae=(vae.file.name, vae.short_hash) if vae else None))
    save = saving.save_request(req.save_images, req.do_not_save_samples, req.do_not_save_grid)
    saving.check_options(state.config.data_dir, kind, options, save)  # refused before it queues
    return kind, Generation(state, req, plan, entry, hires, options, parameters, needed,
                            time.strftime("%Y%m%d%H%M%S"), vae=vae,
                            hires_vae=vae_choice(state, options, hires) if hires else None, kind=kind, save=save,
                            refiner=refiner)


def vae_choice(state: ServerState, options: JobOptions, entry: ModelEntry) -> VaeChoice | None:
    """The separate VAE file `entry` runs with under these options (A1111 modules/sd_vae.py: resolve_vae)."""
    return state.vaes.choose(options.sd_vae, options.sd_vae_overrides_per_model_preferences, entry)


def with_infotext(state: ServerState, req: Request) -> Request:
    """The request with its pasted `infotext` applied (A1111 modules/api/api.py: Api.apply_infotext), so plan
    and `parameters` echo both see it."""
    return apply_infotext(req, state.options.snapshot(), styles_of(state).extract_styles,
                          lambda name: getattr(state.models.find(name), "title", None),
                          state.loras.alias_for_hash)

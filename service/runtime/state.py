"""What one server process holds: options, the model registry, the job queue; shared by REST and gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.backend import BackendChoice
from engine.face_restoration import FaceRestorers
from engine.upscalers import UpscalerRegistry
from service.a1111.errors import InvalidRequest
from service.a1111.job_options import JobOptions
from service.runtime.batching import BatchConfig, Batcher
from service.runtime.embeddings import EmbeddingRegistry
from service.runtime.jobs import Job, JobQueue
from service.runtime.logs import log_jobs
from service.runtime.loras import LoraRegistry
from service.runtime.metrics import ServerMetrics
from service.runtime.models import ModelEntry, ModelRegistry
from service.runtime.options import Options
from service.runtime.vae import VaeLibrary
from service.runtime.workers import PipelineModes, RunningBudget, threads_per_worker


class NoModelLoaded(Exception):
    pass


@dataclass
class ServerConfig:
    model: Path | None = None
    models_dir: Path | None = None
    providers: str = "cpu"
    backend: str = "auto"  # --backend: ort | openvino | auto (engine/backend.py: BackendChoice)
    precision: str = "fp32"  # --precision: fp32 | bf16 (bf16 on OpenVINO only)
    max_queue: int = 64
    options_file: Path | None = None
    api_auth: str | None = None
    api_log: bool = False
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    listen: bool = False
    upscalers_dir: Path | None = None
    lora_dirs: list[Path] = field(default_factory=list)  # --lora-dir and models/LyCORIS (A1111's two folders)
    embeddings_dirs: list[Path] = field(default_factory=list)  # --embeddings-dir (textual inversion)
    face_restorers_dir: Path | None = None  # --face-restorers-dir: RetinaFace detector + GFPGAN/CodeFormer ONNX
    max_body_size: int = 64 * 1024 * 1024  # bytes of one HTTP request body (--max-body-size)
    max_side: int = 4096  # px per side of any image size a request asks for (--max-side)
    # Bytes one job may use on top of the loaded server (--memory-budget); None: from the machine's RAM when the
    # first job is admitted (service/runtime/admission.py). Larger jobs are refused with a 413.
    memory_budget: int | None = None
    job_timeout: float = 3600.0  # seconds a running job may take (0: no deadline); option sdedge_job_timeout wins
    api_server_stop: bool = False  # A1111's --api-server-stop: /sdapi/v1/server-kill|restart|stop exist
    vae_dirs: list[Path] = field(default_factory=list)  # --vae-dir (A1111's), beside <models-dir>/VAE
    vae_path: Path | None = None  # --vae-path: this VAE file for every checkpoint, whatever sd_vae says
    # Saved images (save_images) never leave this folder; relative outdir_* options are taken from it (--data-dir).
    data_dir: Path = Path(".")
    # init_images may name files inside this folder (--allow-local-images); None: paths are refused (403).
    local_images_dir: Path | None = None
    log_format: str = "text"  # --log-format: json adds sdedge's own access log (service/http/observe.py)
    batch_max: int = 1  # images one batch of compatible jobs may hold (--batch-max); 1 = no batching
    batch_window_ms: float = 0.0  # how long a job waits for companions (--batch-window-ms)
    drain_timeout: float = 60.0  # seconds a SIGTERM waits for running and queued jobs (--drain-timeout)
    workers: int = 1  # jobs run at once (--workers); ORT threads per session shrink to fit (workers.py)
    extra: dict = field(default_factory=dict)


class ServerState:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics()
        self.draining = False  # set by service/runtime/drain.py: the doors refuse new work (503 / UNAVAILABLE)
        self.options = Options(config.options_file)
        workers = max(1, int(config.workers))
        self.models = ModelRegistry(config.models_dir, [config.model] if config.model else [], config.providers,
                                    BackendChoice(config.backend, config.precision, threads_per_worker(workers)))
        self.models.loader = self.metrics.loader(self.models.loader)
        self.models.limit = lambda: self.options.get("sd_checkpoints_limit") or 1  # A1111's LRU of loaded models
        self.pipeline_modes = PipelineModes()  # what jobs on one pipeline must agree on (workers.py)
        self.running_budget = RunningBudget()  # the memory budget counts every running job
        self.queue = JobQueue(max_pending=config.max_queue, timeout=self.job_timeout, workers=workers)
        self.queue.on_start.append(self.metrics.job_started)
        self.queue.on_end.append(self.metrics.job_ended)
        log_jobs(self.queue)
        self.metrics.attach(self)
        batching = BatchConfig(max(1, int(config.batch_max)), max(0.0, float(config.batch_window_ms)) / 1000)
        self.batcher = Batcher(self, batching) if batching.enabled else None
        self.upscalers = UpscalerRegistry(config.upscalers_dir, config.providers)
        self.loras = LoraRegistry(config.lora_dirs)
        self.embeddings = EmbeddingRegistry(config.embeddings_dirs)
        self.models.loader = self.embeddings.after_load(self.models.loader)  # each model load re-reads them
        # A1111 also finds `*.vae.*` files beside the checkpoints: here the --model bundle's folder too.
        beside = [config.model.parent] if config.model and config.model.parent != config.models_dir else []
        self.vaes = VaeLibrary(config.models_dir, config.vae_dirs, beside, config.providers, config.vae_path)
        self.face_restorers = FaceRestorers(config.face_restorers_dir, config.providers)

    def job_timeout(self) -> float:
        """A running job's deadline in seconds: option `sdedge_job_timeout` if set (> 0), else `--job-timeout`;
        0 means none."""
        seconds = self.options.get("sdedge_job_timeout") or 0
        return float(seconds) if seconds > 0 else float(self.config.job_timeout or 0)

    def default_entry(self) -> ModelEntry:
        """The checkpoint named by the option `sd_model_checkpoint`, else the first known one."""
        return self.checkpoint_for(JobOptions(sd_model_checkpoint=self.options.get("sd_model_checkpoint")))

    def checkpoint_for(self, options: JobOptions) -> ModelEntry:
        """The checkpoint a job with these options runs on (its `sd_model_checkpoint`, else the first known)."""
        wanted = options.sd_model_checkpoint
        entry = self.models.find(str(wanted)) if wanted else None
        if entry is None:
            entries = self.models.entries()
            if not entries:
                raise NoModelLoaded("no model available")
            entry = entries[0]
        return entry

    def load_default(self):
        entry = self.default_entry()
        pipeline = self.models.load(entry)
        if self.options.get("sd_model_checkpoint") != entry.title:
            self.options.update({"sd_model_checkpoint": entry.title, "sd_checkpoint_hash": entry.sha256 or ""},
                                from_api=False, persist=False)
        return entry, pipeline

    def job_options(self, overrides: Mapping[str, Any] | None) -> JobOptions:
        """The options one job sees, typed once: current values plus its `override_settings`. A checkpoint
        override that names no known checkpoint is a 422 naming it (A1111 drops it and runs the configured model,
        A1111 modules/processing.py: process_images; a deliberate deviation, docs/compatibility.md)."""
        overrides = dict(overrides or {})
        wanted = overrides.get("sd_model_checkpoint")
        if wanted is not None and self.models.find(str(wanted)) is None:
            raise InvalidRequest("override_settings", f"sd_model_checkpoint: no checkpoint named {wanted!r} "
                                 "(GET /sdapi/v1/sd-models lists them)")
        options = JobOptions.from_mapping(self.options.with_overrides(overrides))
        if self.config.local_images_dir is None:
            return options
        return replace(options, local_images_dir=str(self.config.local_images_dir))

    def pipeline_for(self, entry: ModelEntry):
        """The loaded pipeline of `entry`, loading it first. Call it on the worker, so loads queue with jobs."""
        return self.models.load(entry)

    def hires_pipelines_for(self, entry: ModelEntry, hires: ModelEntry):
        """`entry`'s pipeline and, for this job only, `hires`'s (hr_checkpoint_name). Like A1111, which loads
        the request's checkpoint back after the hires pass, `entry` stays loaded for the next request. On the
        worker, like `pipeline_for`."""
        return self.models.load_beside(entry, hires)

    def keep_overrides(self, overrides: Mapping[str, Any] | None, entry: ModelEntry) -> None:
        """`override_settings_restore_afterwards: false`: the job's overrides become the server's options."""
        changes = {k: v for k, v in (overrides or {}).items() if k in self.options.defaults and v is not None}
        if "sd_model_checkpoint" in changes:
            changes.update(sd_model_checkpoint=entry.title, sd_checkpoint_hash=entry.sha256 or "")
        if changes:
            self.options.update(changes)

    def switch_checkpoint(self, entry: ModelEntry) -> Job:
        """A job that loads `entry` and makes it the configured checkpoint; it queues behind earlier jobs."""

        def run(job: Job) -> ModelEntry:
            job.progress.job_count = 1
            self.models.load(entry)
            self.options.update({"sd_model_checkpoint": entry.title, "sd_checkpoint_hash": entry.sha256 or ""},
                                from_api=False)
            return entry

        return Job(kind="load-checkpoint", run=run)

    def close(self) -> None:
        self.queue.close()

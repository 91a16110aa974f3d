"""The server's Prometheus metrics (prometheus-client), one registry per ServerState.

Counters and histograms are updated where things happen (the doors count requests, the queue reports job starts and
ends, the pipeline's step hook and the backend's calls are timed); the queue length, the running job, the loaded
models and the drain state are read when someone scrapes, so they can never be stale. `exposition()` is what
GET /metrics and the gRPC `sdedge.v1.Metrics/GetMetrics` call both send.

A per-state registry rather than prometheus-client's global one: tests build several servers in one process, and
each must count only its own requests.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from engine.pipeline import StepEvent
    from service.runtime.jobs import Job
    from service.runtime.state import ServerState

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: a queue wait or a job spans milliseconds (64 px test jobs) to many minutes (hires on a CPU).
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# One denoising step or one component call: sub-millisecond (tiny test models) to tens of seconds (SDXL on a CPU).
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("sdedge_http_requests", "HTTP requests answered, by route template and status",
                                     ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("sdedge_http_request_duration_seconds", "HTTP request duration",
                                      ["method", "route"], buckets=REQUEST_BUCKETS, registry=r)
        self.grpc_requests = Counter("sdedge_grpc_requests", "gRPC calls answered, by method and status code",
                                     ["method", "code"], registry=r)
        self.jobs = Counter("sdedge_jobs", "jobs that ended, by kind and final state", ["kind", "state"], registry=r)
        self.job_wait = Histogram("sdedge_job_wait_seconds", "time a job waited in the queue before it started",
                                  ["kind"], buckets=JOB_BUCKETS, registry=r)
        self.job_run = Histogram("sdedge_job_run_seconds", "time a job ran on the worker", ["kind"],
                                 buckets=JOB_BUCKETS, registry=r)
        self.images = Counter("sdedge_images_generated", "images generated (grids not counted)", registry=r)
        self.steps = Counter("sdedge_sampling_steps", "denoising steps run (rate() of it is steps/s)", registry=r)
        self.step_seconds = Histogram("sdedge_step_seconds", "time of one denoising step (CFG batch included)",
                                      buckets=CALL_BUCKETS, registry=r)
        self.component_seconds = Histogram("sdedge_component_call_seconds",
                                           "time of one ONNX component call (unet, text_encoder, vae_decoder, ...)",
                                           ["component"], buckets=CALL_BUCKETS, registry=r)
        self.model_load = Histogram("sdedge_model_load_seconds", "time to load a checkpoint's pipeline",
                                    buckets=LOAD_BUCKETS, registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds (Linux /proc)
        self._state: ServerState | None = None

    def attach(self, state: ServerState) -> None:
        """Read the queue, the models and the drain flag from `state` at every scrape."""
        self._state = state
        self.registry.register(_StateCollector(state))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- hooks ------------------------------------------------------------------------------------------------

    def job_started(self, job: Job) -> None:
        if job.progress.time_start is not None and job.enqueued_at:
            self.job_wait.labels(job.kind).observe(max(0.0, job.progress.time_start - job.enqueued_at))

    def job_ended(self, job: Job) -> None:
        self.jobs.labels(job.kind, job.state.value).inc()
        if job.progress.time_start is not None and job.finished_at is not None:
            self.job_run.labels(job.kind).observe(max(0.0, job.finished_at - job.progress.time_start))

    def timed_steps(self, on_step: Callable[[StepEvent], None]) -> Callable[[StepEvent], None]:
        """`on_step` that also counts steps and times each step after the first of its batch (the first one's
        start is not marked: its interval would include the prompt's encoding)."""
        last: dict[str, Any] = {"key": None, "at": 0.0}

        def timed(event: StepEvent) -> None:
            now = time.perf_counter()
            self.steps.inc()
            if last["key"] == (event.job_no, event.step - 1):
                self.step_seconds.observe(now - last["at"])
            last["key"], last["at"] = (event.job_no, event.step), now
            on_step(event)

        return timed

    def loader(self, load: Callable[..., Any]) -> Callable[..., Any]:
        """`load(path, providers) -> Pipeline`, timed, its backend's calls timed per component."""

        @functools.wraps(load)
        def timed_load(*args, **kwargs):
            start = time.perf_counter()
            pipeline = load(*args, **kwargs)
            self.model_load.observe(time.perf_counter() - start)
            self.time_backend(pipeline.backend)
            return pipeline

        return timed_load

    def time_backend(self, backend: Any) -> None:
        """Every `backend.run(component, inputs)` observed in sdedge_component_call_seconds. The engine calls its
        components only through `run` (engine/backend.py: ExecutionBackend), and the pipeline's UNet, prompt
        encoder and VAE hold this same object, so wrapping the instance's method times them all without the
        engine knowing about metrics."""
        run = backend.run
        if getattr(run, "_sdedge_timed", False):
            return
        histogram = self.component_seconds

        def timed_run(component: str, inputs):
            start = time.perf_counter()
            try:
                return run(component, inputs)
            finally:
                histogram.labels(component).observe(time.perf_counter() - start)

        timed_run._sdedge_timed = True  # type: ignore[attr-defined]
        backend.run = timed_run


class _StateCollector:
    """Gauges read from the live state at scrape time."""

    def __init__(self, state: ServerState):
        self.state = state

    def describe(self):
        return []  # unchecked collector: its families are produced per scrape

    def collect(self):
        queue = self.state.queue
        pending = GaugeMetricFamily("sdedge_queue_length", "jobs waiting in the queue")
        pending.add_metric([], len(queue.pending()))
        yield pending
        running = GaugeMetricFamily("sdedge_jobs_running", "jobs running now")
        running.add_metric([], len(queue.running()))  # every worker's job and the jobs riding in its batch
        yield running
        loaded = GaugeMetricFamily("sdedge_models_loaded", "checkpoints loaded (1 per loaded model)", labels=["model"])
        for entry in self.state.models.loaded_entries():  # up to sd_checkpoints_limit (model_cache.py)
            loaded.add_metric([entry.title], 1)
        yield loaded
        healthy = GaugeMetricFamily("sdedge_worker_healthy", "1 while every job worker is alive and on time")
        healthy.add_metric([], 1 if queue.healthy() else 0)
        yield healthy
        draining = GaugeMetricFamily("sdedge_draining", "1 once a SIGTERM/SIGINT started the drain")
        draining.add_metric([], 1 if getattr(self.state, "draining", False) else 0)
        yield draining

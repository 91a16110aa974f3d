"""The gRPC front door (sdedge.v1.SdEdge) with standard health and reflection, on the REST server's queue.

Each RPC converts its proto request into the sdapi pydantic model and takes service/runtime/generate.py's path, so a
request means the same over both doors. The end of an RPC (deadline, client cancel) cancels its job.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from engine.pipeline import GenerationResult
from engine.samplers import SAMPLERS
from engine.schedules import SCHEDULERS
from service.a1111.encode import encode_image
from service.a1111.errors import (
    InvalidRequest,
    JobTimeout,
    JobTooLarge,
    ModelUnavailable,
    NotFound,
    OptionRefused,
    QueueBusy,
    ServiceError,
    ShuttingDown,
)
from service.a1111.image_io import ImageInputError, decode_image, limits_from_options
from service.a1111.image_metadata import json_safe, read_info_from_image
from service.a1111.infotext import parse_infotext
from service.a1111.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from service.generated import metrics_pb2_grpc
from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from service.http.auth import check, parse_credentials
from service.rpc import convert
from service.rpc.observe import METRICS_SERVICE, MetricsServicer, ObserveInterceptor
from service.runtime.generate import Finish, Listener, submit
from service.runtime.jobs import Job, JobCancelled
from service.runtime.progress import job_architecture, preview_of, progress_response
from service.runtime.set_options import apply_options
from service.runtime.state import ServerState

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SdEdge"].full_name
MiB = 1024 * 1024
POLL_SECONDS = 0.1
HEALTH_POLL_SECONDS = 0.25



@dataclass(frozen=True)
class GrpcConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (tests); the CLI treats 0 as "disabled" before we get here
    max_message_bytes: int = 64 * MiB
    max_workers: int = 32  # each waiting RPC holds a thread while its job is queued
    reflection: bool = True


# Each domain exception's code (most specific class first; service/a1111/errors.py).
_CODES: tuple[tuple[type[ServiceError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),  # RequestTooLarge too: a bad argument, not a quota
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (OptionRefused, grpc.StatusCode.INVALID_ARGUMENT),
    (JobTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueBusy, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (JobTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
)
# image_io.ImageInputError says 413 for oversized input, 403 for a fetch refused, else 422.
_IMAGE_INPUT_CODES = {403: grpc.StatusCode.PERMISSION_DENIED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                      422: grpc.StatusCode.INVALID_ARGUMENT}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for what the shared generation path raised."""
    if isinstance(exc, ServiceError):
        code = next((code for cls, code in _CODES if isinstance(exc, cls)), grpc.StatusCode.INVALID_ARGUMENT)
        return code, str(exc.detail)
    if isinstance(exc, ValidationError):
        errors = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return grpc.StatusCode.INVALID_ARGUMENT, errors
    if isinstance(exc, ImageInputError):
        return _IMAGE_INPUT_CODES.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT), str(exc)
    if isinstance(exc, JobCancelled):
        return grpc.StatusCode.CANCELLED, f"job {exc} was cancelled"
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def _abort(context: grpc.ServicerContext, exc: BaseException):
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("gRPC request failed", exc_info=exc)
    context.abort(code, message)


def progress_fraction(job_no: int, job_count: int, step: int, steps: int) -> float:
    if job_count <= 0:
        return 0.0
    return min(1.0, (job_no + (step / steps if steps > 0 else 0.0)) / job_count)


def eta_seconds(started: float | None, fraction: float) -> float:
    if not started or fraction <= 0:
        return 0.0
    elapsed = time.time() - started
    return elapsed / fraction - elapsed


class SdEdgeServicer(pb_grpc.SdEdgeServicer):
    def __init__(self, state: ServerState):
        self.state = state

    # -- generation -------------------------------------------------------------------------------------------

    def _submit(self, kind: str, message: Any, listener: Listener | None = None) -> tuple[Job, Finish]:
        model = Img2ImgRequest if kind == "img2img" else Txt2ImgRequest
        return submit(self.state, convert.to_sdapi(message, model), listener)

    def _cancel_with_rpc(self, job: Job, context: grpc.ServicerContext) -> None:
        """When the RPC ends early (deadline, client cancel) the job goes: removed if queued, else interrupted."""

        def on_rpc_done() -> None:
            if not job.future.done():
                log.info("gRPC call ended, cancelling %s", job.id)
                self.state.queue.cancel(job)

        if not context.add_callback(on_rpc_done):
            on_rpc_done()

    def _result(self, job: Job, context: grpc.ServicerContext) -> GenerationResult:
        while True:
            try:
                return job.future.result(timeout=POLL_SECONDS)
            except futures.TimeoutError:
                if not context.is_active():
                    self.state.queue.cancel(job)

    def _unary(self, kind: str, request: Any, context: grpc.ServicerContext) -> pb.GenerationResponse:
        try:
            job, finish = self._submit(kind, request)
            self._cancel_with_rpc(job, context)
            result = self._result(job, context)
            if not context.is_active():
                return pb.GenerationResponse()  # nobody is listening: skip the encoding
            response = finish(result, as_bytes=True)
            return convert.generation_response(response, job.id, result.interrupted)
        except Exception as exc:  # every failure becomes a status, never a dropped connection
            _abort(context, exc)

    def Txt2Img(self, request, context):
        return self._unary("txt2img", request, context)

    def Img2Img(self, request, context):
        return self._unary("img2img", request, context)

    def Generate(self, request, context) -> Iterator[pb.GenerateEvent]:
        kind = request.WhichOneof("request")
        if kind is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: set txt2img or img2img")
        events: queue.Queue = queue.Queue()
        try:
            job, finish = self._submit(kind, getattr(request, kind), listener=lambda j: events.put(_snapshot(j)))
        except Exception as exc:
            _abort(context, exc)
        self._cancel_with_rpc(job, context)
        yield pb.GenerateEvent(task_id=job.id, queued=pb.Queued(position=self.state.queue.position(job) or 0))
        every = request.preview_every_n_steps
        last = None
        while not job.future.done() or not events.empty():
            try:
                snap = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            key = (snap["job_no"], snap["sampling_step"])
            if snap["sampling_steps"] <= 0 or key == last:
                continue  # job start / end notifications carry no new step
            last = key
            progress = self._progress_message(snap)
            if every > 0 and snap["latents"] is not None and snap["sampling_step"] % every == 0:
                progress.preview.CopyFrom(self._preview(snap["latents"]))
            yield pb.GenerateEvent(task_id=job.id, progress=progress)
        try:
            result = self._result(job, context)
            response = finish(result, as_bytes=True)
            full = convert.generation_response(response, job.id, result.interrupted)
        except Exception as exc:
            _abort(context, exc)
        for image in full.images:
            yield pb.GenerateEvent(task_id=job.id, image=image)
        yield pb.GenerateEvent(task_id=job.id, done=pb.Done(info=full.info, info_json=full.info_json,
                                                            parameters=full.parameters,
                                                            interrupted=full.interrupted))

    @staticmethod
    def _progress_message(snap: dict) -> pb.Progress:
        fraction = progress_fraction(snap["job_no"], snap["job_count"], snap["sampling_step"], snap["sampling_steps"])
        return pb.Progress(job_no=snap["job_no"], job_count=snap["job_count"], sampling_step=snap["sampling_step"],
                           sampling_steps=snap["sampling_steps"], progress=fraction,
                           eta_relative=eta_seconds(snap["time_start"], fraction))

    def _architecture(self) -> str:
        loaded = self.state.models.loaded
        return job_architecture(self.state.queue.current,
                                loaded[1].manifest.architecture if loaded is not None else "sd1")

    def _preview(self, latents) -> pb.Image:
        """The live preview of the batch, made as /progress makes it (service/runtime/progress.py)."""
        options = self.state.options.snapshot()
        image = preview_of(latents, options, self._architecture())
        data = encode_image(image, str(options.get("live_previews_image_format", "png")))
        return pb.Image(data=data, mime_type=convert.mime_type(data))

    # -- control and progress ---------------------------------------------------------------------------------

    def Interrupt(self, request, context):
        if request.HasField("task_id"):
            job = self.state.queue.get(request.task_id)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"task_id: no queued or running job {request.task_id!r}")
            self.state.queue.cancel(job)
        else:  # as REST /interrupt: every running job (one with a single worker)
            self.state.queue.interrupt_current()
        return pb.InterruptResponse()

    def Skip(self, request, context):
        self.state.queue.skip_current()
        return pb.SkipResponse()

    def GetProgress(self, request, context):
        queue = self.state.queue
        r = progress_response(queue, self.state.options.snapshot(), self._architecture(),
                              skip_current_image=request.skip_current_image)
        response = pb.GetProgressResponse(progress=r["progress"], eta_relative=r["eta_relative"],
                                          state=pb.ProgressState(**r["state"]), task_id=r["current_task"] or "",
                                          queue_length=len(queue.pending()))
        if r["textinfo"] is not None:
            response.textinfo = r["textinfo"]
        if r["current_image"]:
            data = base64.b64decode(r["current_image"])
            response.current_image.CopyFrom(pb.Image(data=data, mime_type=convert.mime_type(data)))
        return response

    # -- listings and options ---------------------------------------------------------------------------------

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[
            pb.Model(title=e.title, model_name=e.name, hash=e.short_hash, sha256=e.sha256, filename=str(e.path))
            for e in self.state.models.entries()
        ])

    def ListVaes(self, request, context):
        return pb.ListVaesResponse(vaes=[pb.Vae(model_name=f.name, filename=str(f.path))
                                         for f in self.state.vaes.files()])

    def ListSamplers(self, request, context):
        # A1111 stringifies option values (True → "True").
        return pb.ListSamplersResponse(samplers=[
            pb.Sampler(name=s.name, aliases=list(s.aliases), options={k: str(v) for k, v in s.options.items()})
            for s in SAMPLERS.values()
        ])

    def ListSchedulers(self, request, context):
        return pb.ListSchedulersResponse(schedulers=[
            pb.Scheduler(name=s.name, label=s.label, aliases=list(s.aliases or ()), default_rho=s.default_rho,
                         need_inner_model=s.need_inner_model)
            for s in SCHEDULERS.values()
        ])

    def GetOptions(self, request, context):
        return pb.GetOptionsResponse(options=convert.python_to_struct(self.state.options.api_snapshot()))

    def SetOptions(self, request, context):
        try:
            apply_options(self.state, convert.struct_to_python(request.options))
        except Exception as exc:
            _abort(context, exc)
        return pb.SetOptionsResponse()

    def PngInfo(self, request, context):
        options = self.state.options.snapshot()
        try:
            # The REST decoder, so size limits and refusals are the same on both doors.
            image = decode_image(base64.b64encode(request.image).decode("ascii"), limits_from_options(options))
        except ImageInputError as exc:
            code = _IMAGE_INPUT_CODES.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(code, f"image: {exc}")
        info, items = read_info_from_image(image)
        info = info or ""
        return pb.PngInfoResponse(info=info, items=convert.python_to_struct(json_safe(items)),
                                  parameters=convert.python_to_struct(json_safe(parse_infotext(info, options))))


def _snapshot(job: Job) -> dict:
    """What the worker reported, copied on the worker thread so later steps cannot change it."""
    p = job.progress
    return {"job_no": p.job_no, "job_count": p.job_count, "sampling_step": p.sampling_step,
            "sampling_steps": p.sampling_steps, "latents": p.latents, "time_start": p.time_start}


# -- auth -------------------------------------------------------------------------------------------------------


class BasicAuthInterceptor(grpc.ServerInterceptor):
    """`authorization: Basic base64(user:pass)` metadata checked as REST checks the header (service/http/auth.py);
    health and reflection stay open so probes and grpcurl's listing work without credentials."""

    def __init__(self, credentials: dict[str, str], open_services: set[str]):
        self.credentials = credentials
        self.open_services = open_services

    def intercept_service(self, continuation, handler_call_details):
        service = handler_call_details.method.rsplit("/", 2)[-2] if "/" in handler_call_details.method else ""
        if service in self.open_services:
            return continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        problem = check(next((v for k, v in metadata if k == "authorization"), None), self.credentials)
        if problem is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny, handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)


# -- server -----------------------------------------------------------------------------------------------------


class GrpcServer:
    """The gRPC server beside uvicorn in one process; health follows whether a model is loaded and the job
    worker is alive (NOT_SERVING while it is restarted)."""

    def __init__(self, state: ServerState, config: GrpcConfig = GrpcConfig()):
        self.state = state
        self.config = config
        self.port: int | None = None
        self.health = health.HealthServicer()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share its connections
        ]
        open_services = {health.SERVICE_NAME, reflection.SERVICE_NAME}
        credentials = parse_credentials(state.config.api_auth) if state.config.api_auth else {}
        interceptors = [BasicAuthInterceptor(credentials, open_services)] if credentials else []
        interceptors.insert(0, ObserveInterceptor(state, {SERVICE_NAME}))  # outermost: counts the 401s too
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="grpc"),
                                  options=options, interceptors=interceptors)
        pb_grpc.add_SdEdgeServicer_to_server(SdEdgeServicer(state), self.server)
        metrics_pb2_grpc.add_MetricsServicer_to_server(MetricsServicer(state), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.reflection:
            reflection.enable_server_reflection((SERVICE_NAME, METRICS_SERVICE, health.SERVICE_NAME,
                                                 reflection.SERVICE_NAME), self.server)

    def start(self) -> int:
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot bind gRPC to {address} (in use?)") from exc
        self._set_serving(False)
        self.server.start()
        self._watcher = threading.Thread(target=self._watch_model, name="sdedge-grpc-health", daemon=True)
        self._watcher.start()
        log.info("gRPC %s on %s:%d", SERVICE_NAME, self.config.host, self.port)
        return self.port

    def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _watch_model(self) -> None:
        # The registry and the queue have no events; a cheap poll keeps health honest whoever loads, unloads or
        # kills the worker.
        serving = False
        while not self._stop.is_set():
            now = self.state.models.loaded is not None and self.state.queue.healthy()
            if now != serving:
                self._set_serving(now)
                serving = now
            self._stop.wait(HEALTH_POLL_SECONDS)

    def begin_drain(self) -> None:
        """Health NOT_SERVING for good (load balancers and probes stop sending); calls are refused by
        ObserveInterceptor while `state.draining`."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = 5.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


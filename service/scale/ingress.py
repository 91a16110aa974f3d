"""The Ray Serve ingress: the sdapi over HTTP (FastAPI via @serve.ingress), forwarding whole requests to the
replicas (service/scale/replica.py). It decides only where a request goes: the checkpoint of a generation (its
`override_settings.sd_model_checkpoint`, else the configured one) as the multiplexed model id; the replica
holding a task for its progress, interrupt and skip. Everything a request means is decided on the replica, by
sdedge's own app.

No `from __future__ import annotations` here: @serve.ingress re-declares the routes on the class, and FastAPI
must see real annotations (with strings, `request: Request` became a query parameter)."""

import asyncio
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from service.http.errors import install_error_handlers
from service.runtime.jobs import new_task_id
from service.runtime.models import ModelRegistry
from service.runtime.options import Options
from service.scale.errors import ReplicaLost
from service.scale.forward import Answer, Forwarded
from service.scale.settings import ScaleConfig

log = logging.getLogger(__name__)

GENERATION = {"/sdapi/v1/txt2img": "txt2img", "/sdapi/v1/img2img": "img2img"}
STOPS = {"/sdapi/v1/interrupt": "interrupt", "/sdapi/v1/skip": "skip"}
ATTEMPTS_HEADER = "x-sdedge-attempts"
REPLICA_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)
RECENT_TASKS = 1024  # finished tasks whose replica is remembered (for a late /internal/progress)

app = FastAPI(title="sdedge on Ray Serve", description="Stable Diffusion behind the AUTOMATIC1111 sdapi")
install_error_handlers(app)


def _response(answer: Answer, attempts: int | None = None) -> Response:
    response = Response(content=answer.body, status_code=answer.status)
    headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-length"]
    response.raw_headers = headers + [(b"content-length", str(len(answer.body)).encode())]
    if attempts is not None:
        response.raw_headers.append((ATTEMPTS_HEADER.encode(), str(attempts).encode()))
    return response


@serve.ingress(app)
class SdapiIngress:
    def __init__(self, replicas: DeploymentHandle, config: ScaleConfig):
        self.replicas = replicas
        self.config = config
        server = config.server
        self.models = ModelRegistry(server.models_dir, [server.model] if server.model else [])
        configured = Options(server.options_file).get("sd_model_checkpoint") if server.options_file else None
        entry = self.models.find(str(configured)) if configured else None
        entries = self.models.entries()
        self.default = entry.title if entry else (entries[0].title if entries else "")
        self.in_flight: OrderedDict[str, str] = OrderedDict()  # task id → replica id, in submission order
        self.finished: OrderedDict[str, str] = OrderedDict()

    # -- where things go ------------------------------------------------------------------------------------

    def checkpoint_of(self, payload: dict[str, Any]) -> str:
        """The multiplexed model id of a request: its checkpoint's title, so every alias (name, hash, file)
        reaches the same replicas. A name no checkpoint has goes to the default checkpoint's replicas, whose app
        answers the 422 (service/runtime/state.py: job_options)."""
        overrides = payload.get("override_settings")
        wanted = overrides.get("sd_model_checkpoint") if isinstance(overrides, dict) else None
        if wanted:
            if self.models.find(str(wanted)) is None:  # a bundle added since: the replicas will see it too
                self.models.refresh()
            entry = self.models.find(str(wanted))
            if entry is not None:
                return entry.title
        return self.default

    def replica_of(self, task_id: str | None) -> str | None:
        if not task_id:
            return next(reversed(self.in_flight.values()), None)  # A1111's /progress: the latest job
        return self.in_flight.get(task_id) or self.finished.get(task_id)

    def _done(self, task_id: str) -> None:
        replica = self.in_flight.pop(task_id, None)
        if replica is not None:
            self.finished[task_id] = replica
            while len(self.finished) > RECENT_TASKS:
                self.finished.popitem(last=False)

    # -- the routes -----------------------------------------------------------------------------------------

    @app.get("/sdedge/v1/ray/tasks")
    async def tasks(self) -> dict[str, Any]:
        """sdedge on Ray: which replica holds each task in flight."""
        return {"in_flight": dict(self.in_flight), "default_checkpoint": self.default}

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    async def route(self, path: str, request: Request) -> Response:
        forwarded = Forwarded(request.method, request.url.path, request.url.query.encode(),
                              tuple(request.headers.raw), await request.body())
        path = request.url.path.rstrip("/") or "/"
        query = parse_qs(request.url.query)
        task = (query.get("id_task") or [None])[0]
        if request.method == "POST" and path in GENERATION:
            return await self.generate(forwarded, GENERATION[path])
        if request.method == "POST" and path in STOPS:
            return await self.stop(STOPS[path], task)
        if request.method == "POST" and path == "/sdapi/v1/options":
            return await self.set_options(forwarded)
        if request.method == "POST" and path == "/internal/progress":
            body = forwarded.json()
            task = body.get("id_task") if isinstance(body, dict) and isinstance(body.get("id_task"), str) else None
            return await self.forward(forwarded, task, self.replica_of(task) if task else None)
        if path.startswith("/sdedge/v1/tasks/"):  # SSE of one task: buffered until the task ends
            task = path.split("/")[4]
            return await self.forward(forwarded, task, self.replica_of(task))
        if path in ("/sdapi/v1/progress", "/internal/pending-tasks", "/sdedge/v1/queue"):
            return await self.forward(forwarded, task, self.replica_of(task))
        return await self.forward(forwarded, None, None)

    async def forward(self, request: Forwarded, task: str | None, replica: str | None) -> Response:
        handle = self.replicas.options(multiplexed_model_id=self.default)
        try:
            answer = await handle.forward.remote(request, task_id=task, replica=replica)
        except REPLICA_GONE as exc:
            raise ReplicaLost(f"the replica answering {request.path} stopped ({type(exc).__name__}); "
                              "send the request again") from None
        return _response(answer)

    async def stop(self, action: str, task: str | None) -> Response:
        """/interrupt and /skip reach the replica that holds the task, or, without one, every replica running
        a task of this ingress (A1111 stops the job that runs; here several may)."""
        targets = {self.replica_of(task)} if task else set(self.in_flight.values())
        calls = [self.replicas.stop.remote(action, task_id=task, replica=r) for r in targets if r]
        await asyncio.gather(*calls, return_exceptions=True)  # a replica gone has nothing left to stop
        return Response(content=b"{}" if action == "interrupt" else b"null", media_type="application/json")

    async def set_options(self, request: Forwarded) -> Response:
        """`sd_model_checkpoint` changes where requests without an override go (every runtime keeps its own
        checkpoint); other options are sent to the default checkpoint's replica (docs/scale-out.md)."""
        payload = request.json()
        if not isinstance(payload, dict) or "sd_model_checkpoint" not in payload:
            return await self.forward(request, None, None)
        wanted = payload.get("sd_model_checkpoint")
        entry = self.models.find(str(wanted)) if wanted else None
        if entry is None:  # the replica's app refuses it in A1111's shape
            return await self.forward(request, None, None)
        self.default = entry.title
        rest = {k: v for k, v in payload.items() if k not in ("sd_model_checkpoint", "sd_checkpoint_hash")}
        if rest:
            return await self.forward(request.with_json(rest), None, None)
        return Response(content=b"null", media_type="application/json")

    async def generate(self, request: Forwarded, kind: str) -> Response:
        """POST /sdapi/v1/txt2img, /img2img: the request whole to a replica that has its checkpoint."""
        payload = request.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("force_task_id") or "", str):
            return await self.forward(request, None, None)  # the replica's app answers the 422
        task = payload.get("force_task_id") or new_task_id(kind)
        request = request.with_json({**payload, "force_task_id": task})
        handle = self.replicas.options(stream=True, multiplexed_model_id=self.checkpoint_of(payload))
        answer, attempts = await self.send_job(task, lambda: handle.generate.remote(request, task))
        return _response(answer, attempts)

    async def send_job(self, task: str, call) -> tuple[Any, int]:
        """Send a job (`call()` starts the replica's event stream) and return its answer and the attempts it
        took. A replica that dies before answering: the job is sent again with the same task id (a job that had
        started runs again from its start, unless `retry_started` is off), at most `max_retries` times; then
        ReplicaLost (503 / UNAVAILABLE). Never dropped."""
        attempt = 0
        try:
            while True:
                attempt += 1
                started = False
                try:
                    async for event in call():
                        if event["event"] == "accepted":
                            self.in_flight[task] = event["replica"]
                        elif event["event"] == "started":
                            started = True
                        elif event["event"] == "answer":
                            return event["answer"], attempt
                    raise ReplicaLost(f"the replica holding {task} ended its answer early")
                except REPLICA_GONE as exc:
                    retry = attempt <= self.config.max_retries and (self.config.retry_started or not started)
                    log.warning("replica lost %s task %s (attempt %d): %s; %s", "running" if started else "queuing",
                                task, attempt, type(exc).__name__, "retrying" if retry else "giving up")
                    if not retry:
                        when = "after" if started else "before"
                        raise ReplicaLost(f"the replica holding task {task} stopped before answering ({when} the "
                                          f"job started, {attempt} attempt(s)); send the request again") from None
                    self.in_flight.pop(task, None)
                    await asyncio.sleep(min(2.0, 0.25 * attempt))
        finally:
            self._done(task)

    # -- gRPC (Ray Serve's gRPC proxy calls the method named after the RPC) -----------------------------------

    async def Txt2Img(self, request, grpc_context=None):  # noqa: N802 - the RPC's name
        return await self._grpc_job("txt2img", request, grpc_context)

    async def Img2Img(self, request, grpc_context=None):  # noqa: N802
        return await self._grpc_job("img2img", request, grpc_context)

    async def _grpc_job(self, kind: str, request, grpc_context):
        """sdedge.v1.SdEdge/Txt2Img and Img2Img as whole jobs; statuses as `sdedge serve`'s gRPC door gives."""
        from service.generated import sdedge_pb2 as pb
        from service.rpc.convert import sdapi_fields
        from service.rpc.server import status_for

        task = request.force_task_id or new_task_id(kind)
        request.force_task_id = task
        message = request.SerializeToString()
        handle = self.replicas.options(stream=True, multiplexed_model_id=self.checkpoint_of(sdapi_fields(request)))
        try:
            (answer, failure), _ = await self.send_job(task, lambda: handle.generate_grpc.remote(kind, message, task))
        except ReplicaLost as exc:
            code, details = status_for(exc)
            failure = (code.name, details)
        if failure is not None:
            import grpc

            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode[failure[0]])
                grpc_context.set_details(failure[1])
            return pb.GenerationResponse()
        return pb.GenerationResponse.FromString(answer)

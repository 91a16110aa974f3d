"""The replica deployment: sdedge runtimes, one per checkpoint it has loaded (Ray Serve model multiplexing), each
answering whole sdapi requests through sdedge's own app. Nothing runs per step across processes: a job is sent
once and answered once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ray
from ray import serve

from service.runtime.jobs import JobState
from service.runtime.state import ServerConfig
from service.scale.forward import Answer, Forwarded, call_app
from service.scale.grpc_jobs import grpc_unary
from service.scale.runtime import CheckpointRuntime

# Response headers the replica adds: who answered, with which checkpoint, and what it had loaded before.
REPLICA_HEADER = "x-sdedge-replica"
ACTOR_HEADER = "x-sdedge-replica-actor"
CHECKPOINT_HEADER = "x-sdedge-checkpoint"
LOADED_HEADER = "x-sdedge-loaded-before"


class SdedgeReplica:
    """Subclassed by `replica_class` with the multiplexed loader `runtime_for(checkpoint)` (its
    `max_num_models_per_replica` is a decorator argument, so the loader is defined there)."""

    runtime_for: Callable[[str], Awaitable[CheckpointRuntime]]

    def __init__(self, config: ServerConfig):
        self.config = config
        self.loaded: dict[str, CheckpointRuntime] = {}
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.actor_name = ray.get_runtime_context().get_actor_name() or ""

    async def open_runtime(self, checkpoint: str) -> CheckpointRuntime:
        runtime = await asyncio.to_thread(CheckpointRuntime.open, self.config, checkpoint, self._closed)
        self.loaded[runtime.checkpoint] = runtime
        return runtime

    def _closed(self, checkpoint: str) -> None:
        self.loaded.pop(checkpoint, None)

    def _holder(self, task_id: str | None) -> CheckpointRuntime | None:
        """The runtime holding the task, else (no task, or an unknown one) the one with the latest job."""
        runtimes = list(self.loaded.values())
        if task_id:
            held = next((r for r in runtimes if r.find(task_id) is not None), None)
            if held is not None:
                return held
        latest = max(runtimes, key=lambda r: (r.state.queue.last.enqueued_at if r.state.queue.last else 0.0),
                     default=None)
        return latest

    def _stamp(self, answer: Answer, checkpoint: str, before: list[str]) -> Answer:
        answer.set_header(REPLICA_HEADER, self.replica_id)
        answer.set_header(ACTOR_HEADER, self.actor_name)
        answer.set_header(CHECKPOINT_HEADER, checkpoint)
        answer.set_header(LOADED_HEADER, json.dumps(before))
        return answer

    async def generate(self, request: Forwarded, task_id: str) -> AsyncIterator[dict[str, Any]]:
        """A txt2img/img2img request, streamed as events: `accepted` (the replica took it: the ingress maps the
        task here), `started` (its job left the queue), then `answer`."""
        checkpoint = serve.get_multiplexed_model_id()
        before = sorted(self.loaded)
        runtime = await self.runtime_for(checkpoint)
        yield {"event": "accepted", "replica": self.replica_id, "task": task_id}
        async for event in self._watched(runtime, task_id, call_app(runtime.app, request)):
            if event["event"] == "answer":
                event["answer"] = self._stamp(event["answer"], runtime.checkpoint, before)
            yield event

    async def generate_grpc(self, kind: str, message: bytes, task_id: str) -> AsyncIterator[dict[str, Any]]:
        """The gRPC Txt2Img/Img2Img (a serialized request) through sdedge's own servicer, in process: events as
        `generate`, the answer being (serialized response, None) or (None, (status code name, details))."""
        checkpoint = serve.get_multiplexed_model_id()
        runtime = await self.runtime_for(checkpoint)
        yield {"event": "accepted", "replica": self.replica_id, "task": task_id}
        call = asyncio.to_thread(grpc_unary, runtime.state, kind, message)
        async for event in self._watched(runtime, task_id, call):
            yield event

    async def _watched(self, runtime: CheckpointRuntime, task_id: str, work) -> AsyncIterator[dict[str, Any]]:
        """Run `work` (an awaitable that submits the task and waits for it); `started` when the task's job leaves
        the queue, then `answer` with what `work` returned."""
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def listener(job) -> None:  # the runtime's worker thread
            if job.state != JobState.QUEUED:
                loop.call_soon_threadsafe(started.set)

        runtime.state.queue.watch(task_id, listener)
        call = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({call, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if started.is_set():
                yield {"event": "started", "task": task_id}
            yield {"event": "answer", "answer": await call}
        finally:
            runtime.state.queue.unwatch(task_id, listener)
            waiter.cancel()
            if not call.done():  # the ingress gave up (its client left): the app sees a disconnect
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call

    async def forward(self, request: Forwarded, task_id: str | None = None, replica: str | None = None) -> Answer:
        """Any other sdapi request: a call for a task or for this replica (`replica`, read by the router too,
        service/scale/routing.py) goes to the runtime holding the task, else to the one with the latest job, and
        never loads a checkpoint; any other call to the runtime of the call's checkpoint, loaded if need be."""
        runtime = self._holder(task_id) if task_id or replica else None
        checkpoint = serve.get_multiplexed_model_id()
        if runtime is None:
            runtime = await self.runtime_for(checkpoint) if checkpoint else None
        if runtime is None:
            return Answer(503, [(b"content-type", b"application/json")], json.dumps(
                {"error": "ModelUnavailable", "detail": "", "body": "", "errors": "no checkpoint loaded"}).encode())
        return self._stamp(await call_app(runtime.app, request), runtime.checkpoint, sorted(self.loaded))

    async def stop(self, action: str, task_id: str | None = None, replica: str | None = None) -> dict[str, Any]:
        """`interrupt` or `skip` one task (waiting: removed; running: stopped after its step), or, without a task,
        whatever runs on every runtime of this replica (A1111's /interrupt, /skip)."""
        stopped: list[str] = []
        for runtime in list(self.loaded.values()):
            queue = runtime.state.queue
            if task_id:
                job = queue.get(task_id)
                if job is None or job.state not in (JobState.QUEUED, JobState.RUNNING):
                    continue
                if action == "interrupt":
                    queue.cancel(job)
                else:
                    job.skip()
                stopped.append(job.id)
            else:
                job = queue.interrupt_current() if action == "interrupt" else queue.skip_current()
                if job is not None:
                    stopped.append(job.id)
        return {"replica": self.replica_id, "stopped": stopped}

    def loaded_checkpoints(self, replica: str | None = None) -> dict[str, Any]:
        return {"replica": self.replica_id, "actor": self.actor_name, "loaded": sorted(self.loaded)}


def replica_class(models_per_replica: int) -> type[SdedgeReplica]:
    """The deployment class with its multiplexed loader: at most `models_per_replica` checkpoints per replica,
    the least recently used unloaded (after its accepted jobs) when another is needed."""

    class Replica(SdedgeReplica):
        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def runtime_for(self, checkpoint: str) -> CheckpointRuntime:
            return await self.open_runtime(checkpoint)

    Replica.__name__ = Replica.__qualname__ = "SdedgeReplica"
    return Replica

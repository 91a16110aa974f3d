"""The job worker cannot die silently (issue 12): whatever a job raises fails that job only, a job past its
deadline fails with a clear error, a dead or stuck worker is replaced, and /internal/ping and gRPC health say
so meanwhile. Faults are injected into real jobs: on the queue itself and through the REST and gRPC doors."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.http.errors import http_status
from service.runtime.jobs import Job, JobFailed, JobQueue, JobState, JobTimeout
from tests.sdapi_server import FAST, wait_until


class Boom(BaseException):
    """Not an Exception: escapes every `except Exception`."""


class BadMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("even the message fails")


def ok(job: Job) -> str:
    return "ok"


@pytest.fixture
def queue():
    q = JobQueue(max_pending=8, abandon_after=0.5, watch_every=0.05)
    yield q
    q.close()


def next_job_runs(queue: JobQueue) -> None:
    assert queue.submit(Job(kind="txt2img", run=ok)).future.result(10) == "ok"


def recurse(n: int = 0) -> int:
    return recurse(n + 1) + 1


@pytest.mark.parametrize("fault, error, message", [
    (Boom("injected"), JobFailed, "the job raised Boom: injected"),
    (KeyboardInterrupt(), JobFailed, "the job raised KeyboardInterrupt: "),
    (SystemExit(3), JobFailed, "the job raised SystemExit: 3"),
    (BadMessage(), JobFailed, "BadMessage: <the exception's message could not be rendered>"),
    (MemoryError("30.9 TiB"), MemoryError, "30.9 TiB"),
])
def test_a_job_that_raises_fails_alone(queue, fault, error, message):
    def run(job: Job):
        raise fault

    job = queue.submit(Job(kind="txt2img", run=run))
    with pytest.raises(error) as raised:
        job.future.result(10)
    assert message in str(raised.value)
    wait_until(lambda: job.state == JobState.FAILED, 5)
    assert job.error.startswith(type(fault).__name__ + ": ")
    next_job_runs(queue)
    assert queue.healthy() and queue.restarts == 0


def test_recursion_error_fails_the_job(queue):
    job = queue.submit(Job(kind="txt2img", run=lambda j: recurse()))
    with pytest.raises(RecursionError):
        job.future.result(10)
    next_job_runs(queue)


def test_failing_listeners_and_summary_do_not_stop_the_worker(queue):
    def broken(job: Job) -> None:
        raise Boom("listener")

    def also_broken(job: Job) -> None:
        raise BadMessage()

    job = Job(kind="txt2img", run=ok, listeners=[broken, also_broken])

    def summary():
        raise BadMessage()

    job.summary = summary  # the finished-job record cannot be made the usual way
    queue.submit(job)
    assert job.future.result(10) == "ok"
    wait_until(lambda: queue.get(job.id) is not None and queue.get(job.id).state == JobState.DONE, 5)
    assert queue.get(job.id).error is None
    next_job_runs(queue)
    assert queue.restarts == 0


def test_a_future_cancelled_while_queued_is_skipped(queue):
    gate = threading.Event()
    first = queue.submit(Job(kind="txt2img", run=lambda j: gate.wait(10)))
    waiting = queue.submit(Job(kind="txt2img", run=ok))
    assert waiting.future.cancel()  # what asyncio.wrap_future does when the REST handler is cancelled
    gate.set()
    assert first.future.result(10) is True
    wait_until(lambda: waiting.state == JobState.CANCELLED, 5)
    next_job_runs(queue)
    assert queue.healthy() and queue.restarts == 0


def test_a_job_past_its_deadline_is_interrupted_and_fails():
    q = JobQueue(timeout=lambda: 0.3, abandon_after=5.0, watch_every=0.02)
    try:
        def until_stopped(job: Job) -> str:
            while not job.should_stop():
                time.sleep(0.01)
            return "partial result"  # an interrupted job would normally answer with what it has

        started = time.time()
        job = q.submit(Job(kind="txt2img", run=until_stopped))
        with pytest.raises(JobTimeout) as raised:
            job.future.result(10)
        assert 0.3 <= time.time() - started < 3
        assert http_status(raised.value) == 504 and "deadline of 0.3 s" in raised.value.detail
        assert job.timed_out and job.state == JobState.FAILED and job.error.startswith("JobTimeout: ")
        next_job_runs(q)
        assert q.restarts == 0 and q.healthy()
    finally:
        q.close()


@pytest.mark.slow
def test_a_job_stuck_past_its_deadline_is_abandoned_and_the_worker_replaced():
    q = JobQueue(timeout=lambda: 0.2, abandon_after=0.3, watch_every=0.02)
    release = threading.Event()
    try:
        stuck = q.submit(Job(kind="txt2img", run=lambda j: release.wait(30)))  # ignores interrupts
        wait_until(lambda: stuck.state == JobState.RUNNING, 5)
        behind = q.submit(Job(kind="txt2img", run=ok))
        wait_until(lambda: not q.healthy(), 5)  # overdue: unhealthy until replaced
        with pytest.raises(JobTimeout, match="abandoned"):
            stuck.future.result(10)
        assert behind.future.result(10) == "ok"  # the new worker took the queue
        assert q.restarts == 1 and q.healthy()
        release.set()  # the old thread finally returns: it must change nothing
        time.sleep(0.2)
        assert stuck.state == JobState.FAILED and "abandoned" in stuck.error
        next_job_runs(q)
    finally:
        release.set()
        q.close()


def kill_worker_after_next_job(q: JobQueue) -> None:
    """The worker thread dies (an error outside any job) right after its next job."""
    original = q._next
    calls = {"n": 0}

    def dying(*args):  # (slot, generation)
        calls["n"] += 1
        if calls["n"] == 1:
            raise Boom("worker killed")
        return original(*args)

    q._next = dying
    q.submit(Job(kind="txt2img", run=ok)).future.result(10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_dead_worker_is_restarted_and_reported_meanwhile(monkeypatch):
    q = JobQueue(watch_every=0.02)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(q, "supervise", lambda: None)  # the watchdog holds off while the death is observed
            kill_worker_after_next_job(q)
            wait_until(lambda: not q._worker.is_alive(), 5)
            assert not q.healthy()
            waiting = q.submit(Job(kind="txt2img", run=ok))
            time.sleep(0.2)
            assert waiting.state == JobState.QUEUED and not q.healthy()
        assert waiting.future.result(10) == "ok"  # the restarted worker takes the queue
        assert q.healthy() and q.restarts == 1
        next_job_runs(q)
    finally:
        q.close()


# -- through the front doors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    """(state, TestClient) on the demo model; the pipeline is patched per test to inject faults."""
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("faults")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json"))
    state.load_default()
    # As a real server answers: an unhandled error is a 500 response, not raised into the test.
    with TestClient(create_app(state), raise_server_exceptions=False) as client:
        yield state, client
    state.close()


def txt2img(client, **extra):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a", "seed": 1, **FAST, **extra})


A1111_ERROR = {"error", "detail", "body", "errors"}


@pytest.mark.parametrize("fault, name", [(Boom("injected"), "JobFailed"), (BadMessage(), "JobFailed"),
                                         (RecursionError("deep"), "RecursionError")])
@pytest.mark.slow
def test_rest_fault_in_a_job_is_a_500_then_the_next_job_runs(server, monkeypatch, fault, name):
    state, client = server
    pipeline_type = type(state.models.load(state.default_entry()))

    def faulty(self, plan, **kwargs):
        raise fault

    with monkeypatch.context() as patch:
        patch.setattr(pipeline_type, "txt2img", faulty)
        r = txt2img(client)
    assert r.status_code == 500 and set(r.json()) == A1111_ERROR
    assert r.json()["error"] == name
    assert client.get("/internal/ping").status_code == 200
    assert txt2img(client).status_code == 200


@pytest.mark.slow
def test_rest_job_past_its_deadline_is_a_504(server, monkeypatch):
    state, client = server
    pipeline_type = type(state.models.load(state.default_entry()))

    def hanging(self, plan, should_stop=None, **kwargs):
        while not should_stop():
            time.sleep(0.01)
        raise AssertionError("not reached: the timeout wins over what the job returns")

    assert client.post("/sdapi/v1/options", json={"sdedge_job_timeout": 0.5}).status_code == 200
    try:
        with monkeypatch.context() as patch:
            patch.setattr(pipeline_type, "txt2img", hanging)
            started = time.time()
            r = txt2img(client)
        assert r.status_code == 504 and set(r.json()) == A1111_ERROR and r.json()["error"] == "JobTimeout"
        assert "deadline of 0.5 s" in r.json()["detail"] and time.time() - started < 5
    finally:
        client.post("/sdapi/v1/options", json={"sdedge_job_timeout": 0})
    assert txt2img(client).status_code == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.slow
def test_ping_and_grpc_health_are_unhealthy_while_the_worker_is_dead(server, monkeypatch):
    from service.rpc.server import SERVICE_NAME, GrpcConfig, GrpcServer

    state, client = server
    grpc_server = GrpcServer(state, GrpcConfig(port=0))
    port = grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)

    def status() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

    try:
        wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, 10)
        with monkeypatch.context() as patch:
            patch.setattr(state.queue, "supervise", lambda: None)  # no restart until both doors were seen
            kill_worker_after_next_job(state.queue)
            wait_until(lambda: client.get("/internal/ping").status_code == 503, 5)
            body = client.get("/internal/ping").json()
            assert set(body) == A1111_ERROR and "worker" in body["detail"]
            wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, 5)
        wait_until(lambda: client.get("/internal/ping").status_code == 200, 10)
        wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, 10)
        assert txt2img(client).status_code == 200
    finally:
        channel.close()
        grpc_server.stop(grace=None)

"""Graceful drain against a real `sdedge serve` process: a SIGTERM during a 20-step job lets that job's client get
its images, answers the queued client (its images within the deadline, a clean 503 after it), refuses new work
with 503 + Retry-After over REST and UNAVAILABLE over gRPC, and the process exits 0; a second signal forces."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from tests.sdapi_server import ROOT, Background, _ready, decode, free_port, running_task

QUICK = {"prompt": "a red circle", "width": 128, "height": 128, "steps": 20}  # 0.4 s on an idle machine
LONG = {"prompt": "a red circle", "width": 256, "height": 256, "steps": 20}  # 0.9 s idle, several under load
# The job a signal arrives during must outlast the test's own pauses even on an idle machine: 6.4 s idle.
RUNNING = {"prompt": "a red circle", "width": 512, "height": 512, "steps": 30}


@contextmanager
def server_process(demo_bundle: Path, workdir: Path, *args: str):
    port, grpc_port = free_port(), free_port()
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--model", str(demo_bundle), "--port", str(port),
             "--models-dir", str(workdir / "models"), "--options-file", str(workdir / "config.json"),
             "--grpc-port", str(grpc_port), *args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            assert _ready(proc, url, log_path), log_path.read_text()[-2000:]
            yield proc, url, f"127.0.0.1:{grpc_port}"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=20)


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)


def test_sigterm_finishes_the_running_and_the_queued_job_refuses_new_work_and_exits_0(demo_bundle, tmp_path):
    with server_process(demo_bundle, tmp_path, "--drain-timeout", "600") as (proc, url, target):
        running = Background(post, url, {**RUNNING, "force_task_id": "task(running)"})
        running_task(url, "task(running)", min_step=2)
        queued = Background(post, url, {**QUICK, "seed": 7})
        time.sleep(0.3)  # the second request is in the queue
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New work is refused on both doors while the two jobs finish.
        refused = post(url, QUICK)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert refused.json()["error"] == "ShuttingDown" and set(refused.json()) == {"error", "detail", "body",
                                                                                       "errors"}
        with grpc.insecure_channel(target) as channel:
            try:
                pb_grpc.SdEdgeStub(channel).Txt2Img(pb.Txt2ImgRequest(prompt="x", steps=1, width=64, height=64))
                raise AssertionError("gRPC accepted work while draining")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        first, second = running.result(timeout=600), queued.result(timeout=600)
        assert proc.wait(timeout=600) == 0
    for response, asked in ((first, RUNNING), (second, QUICK)):
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        assert len(body["images"]) == 1 and decode(body["images"][0]).size == (asked["width"], asked["height"])
        assert json.loads(body["info"])["steps"] == asked["steps"]  # ran to the end, not interrupted
    assert json.loads(second.json()["info"])["seed"] == 7
    log = (tmp_path / "server.log").read_text()
    assert "draining" in log and "drained in" in log


def test_drain_deadline_interrupts_the_running_job_and_answers_the_queued_one_503(demo_bundle, tmp_path):
    with server_process(demo_bundle, tmp_path, "--drain-timeout", "1") as (proc, url, _):
        running = Background(post, url, {**RUNNING, "force_task_id": "task(long)"})
        running_task(url, "task(long)", min_step=1)
        queued = Background(post, url, LONG)
        time.sleep(0.3)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        first, second = running.result(), queued.result()
        assert proc.wait(timeout=60) == 0
        assert time.time() - signalled < 15
    assert first.status_code == 200 and len(first.json()["images"]) == 1  # the steps done so far, as /interrupt
    assert second.status_code == 503 and second.headers["Retry-After"] == "5"
    assert second.json()["error"] == "ShuttingDown"


def test_a_second_signal_forces_the_exit(demo_bundle, tmp_path):
    with server_process(demo_bundle, tmp_path, "--drain-timeout", "600") as (proc, url, _):
        running = Background(post, url, {**LONG, "steps": 150, "force_task_id": "task(endless)"})
        running_task(url, "task(endless)", min_step=1)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # draining: the job goes on
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 1
        try:
            running.result(timeout=10)
        except requests.ConnectionError:
            pass  # the connection died with the process

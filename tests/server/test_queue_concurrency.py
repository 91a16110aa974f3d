"""One FIFO queue under load: 8 concurrent clients × 10 requests each answered once, started in order of arrival,
/progress consistent throughout; a full queue answers 503 without disturbing running and waiting jobs."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.sdapi_server import FAST, Background, progress, running_server, running_task, wait_until

CLIENTS, REQUESTS = 8, 10


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    with running_server(demo_bundle, tmp_path_factory.mktemp("queue"), second_model=False) as url:
        yield url


@pytest.fixture(scope="module")
def small_queue_server(demo_bundle, tmp_path_factory):
    with running_server(demo_bundle, tmp_path_factory.mktemp("queue2"), "--max-queue", "2",
                        second_model=False) as url:
        yield url


def check_progress(p: dict) -> None:
    """What a poller may rely on at any moment."""
    assert set(p) == {"progress", "eta_relative", "state", "current_image", "textinfo", "current_task"}
    s = p["state"]
    if s["job_count"] == 0:
        assert p["progress"] == 0 and p["eta_relative"] == 0 and p["current_image"] is None
        assert s["job"] == "" and p["current_task"] is None
    else:
        assert 0.01 <= p["progress"] <= 1 and p["current_task"] and s["job"]
        assert s["job_count"] == -1 or 0 <= s["job_no"] < s["job_count"]
        assert 0 <= s["sampling_step"] <= s["sampling_steps"] or s["sampling_steps"] == 0


def test_concurrent_clients_fifo(server):
    stop = threading.Event()
    polls: list[dict] = []

    def poll():
        while not stop.is_set():
            polls.append(progress(server))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    answered: dict[str, dict] = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(REQUESTS):
            task = f"task(c{c}-r{i})"
            seed = 1000 * c + i
            body = {"prompt": f"client {c}", "seed": seed, **FAST, "force_task_id": task}
            r = requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.headers["X-Task-Id"] == task
            info = json.loads(r.json()["info"])
            with lock:
                assert task not in answered
                answered[task] = info
            assert info["seed"] == seed  # the answer to this request, not another client's

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    stop.set()
    poller.join()
    assert len(answered) == CLIENTS * REQUESTS
    for p in polls:
        check_progress(p)
    by_task: dict[str, list[float]] = {}
    for p in polls:
        if p["current_task"]:
            by_task.setdefault(p["current_task"], []).append(p["progress"])
    assert all(values == sorted(values) for values in by_task.values())  # never goes backwards within a task
    started = requests.get(f"{server}/sdedge/v1/queue", timeout=10).json()["started"]
    ours = [(seq, task) for seq, task in started if task in answered]
    assert len(ours) == CLIENTS * REQUESTS  # each request ran exactly once
    sequences = [seq for seq, _ in ours]
    assert sequences == sorted(sequences)  # started in order of arrival
    assert progress(server)["state"]["job_count"] == 0


def test_full_queue_503_leaves_other_jobs_alone(small_queue_server):
    server = small_queue_server
    long = Background(requests.post, f"{server}/sdapi/v1/txt2img", timeout=300,
                      json={"prompt": "long", "seed": 1, "steps": 1000, "width": 64, "height": 64,
                            "force_task_id": "task(running)"})
    running_task(server, "task(running)")
    waiting = [Background(requests.post, f"{server}/sdapi/v1/txt2img", timeout=300,
                          json={"prompt": "w", "seed": 2 + i, **FAST, "force_task_id": f"task(waiting-{i})"})
               for i in range(2)]
    wait_until(lambda: requests.get(f"{server}/internal/pending-tasks", timeout=10).json()["size"] == 2)
    full = requests.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "x", **FAST}, timeout=30)
    assert full.status_code == 503 and int(full.headers["Retry-After"]) > 0
    assert set(full.json()) == {"error", "detail", "body", "errors"}
    busy = requests.post(f"{server}/sdapi/v1/extra-single-image", timeout=30,
                         json={"image": "iVBORw0KGgo=", "upscaler_1": "Lanczos"})
    assert busy.status_code in (422, 503)  # a bad image is refused before queueing; never a 500
    p = progress(server)
    assert p["current_task"] == "task(running)" and p["state"]["interrupted"] is False
    requests.post(f"{server}/sdapi/v1/interrupt", timeout=10)
    assert long.result().status_code == 200
    for i, w in enumerate(waiting):
        r = w.result()
        assert r.status_code == 200 and json.loads(r.json()["info"])["seed"] == 2 + i

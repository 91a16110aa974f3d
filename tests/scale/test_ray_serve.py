"""sdedge on Ray Serve (service/scale/): a local Ray cluster, two replicas, two checkpoints.

40 mixed requests from 8 clients are all answered, each by a replica that had its checkpoint loaded before the
request (after one warm-up request per checkpoint); then one replica is killed while it holds jobs, and every
request is still answered (retried elsewhere with its task id) or refused with A1111's 503 — none dropped."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

from PIL import Image  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8
A1111_ERROR_KEYS = {"error", "detail", "body", "errors"}
GRPC_SERVICER = "service.generated.sdedge_pb2_grpc.add_SdEdgeServicer_to_server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(shapes_bundle, demo_bundle, tmp_path_factory):
    from service.runtime.models import ModelRegistry
    from service.runtime.state import ServerConfig
    from service.scale.app import build
    from service.scale.settings import ScaleConfig

    models = tmp_path_factory.mktemp("ray-models")
    (models / "a-shapes").symlink_to(shapes_bundle)
    (models / "b-tiny").symlink_to(demo_bundle)
    titles = [e.title for e in ModelRegistry(models).entries()]
    assert len(titles) == 2
    port = _free_port()
    # Workers import this worktree's packages, not whatever the environment's editable install points at.
    # Autoscaling metrics pushed every second instead of every 10 (test_replicas_scale_up_on_queue_length).
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
           "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             log_to_driver=False, runtime_env={"env_vars": env})
    try:
        grpc_port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]})
        server = ServerConfig(models_dir=models, options_file=None, data_dir=tmp_path_factory.mktemp("ray-data"),
                              max_queue=64, drain_timeout=20.0)
        config = ScaleConfig(server=server, min_replicas=2, max_replicas=2, num_cpus=1.0, models_per_replica=2)
        started = time.perf_counter()
        serve.run(build(config), name="sdedge", route_prefix="/")
        print(f"\nRay Serve app up in {time.perf_counter() - started:.1f} s")
        yield SimpleNamespace(base=f"http://127.0.0.1:{port}", titles=titles, server=server,
                              grpc=f"127.0.0.1:{grpc_port}")
    finally:
        serve.shutdown()
        ray.shutdown()


def _txt2img(base: str, checkpoint: str | None, seed: int, steps: int = 2) -> requests.Response:
    body = {"prompt": "a red circle", "steps": steps, "width": 64, "height": 64, "seed": seed, "cfg_scale": 5}
    if checkpoint is not None:
        body["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return requests.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300)


def _image(response: requests.Response) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))


def _mixed(titles: list[str], i: int) -> tuple[str | None, str]:
    """(what the request names, the checkpoint title it must run on): by title, by name, or no override (the
    configured checkpoint, the first)."""
    shapes, tiny = titles
    return [(tiny, tiny), (shapes.split(" [")[0], shapes), (None, shapes), (tiny.split(" [")[0], tiny)][i % 4]


def test_forty_mixed_requests_each_on_a_replica_that_had_its_checkpoint(cluster):
    base, titles = cluster.base, cluster.titles
    # The first request of each checkpoint loads it on the replica with the fewest models (one each).
    for title in titles:
        warm = _txt2img(base, title, seed=1)
        assert warm.status_code == 200, warm.text
        assert warm.headers["x-sdedge-checkpoint"] == title
    time.sleep(2.0)  # the replicas' loaded models reach the ingress's router (Ray's long poll)

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [(i, *_mixed(titles, i), pool.submit(_txt2img, base, _mixed(titles, i)[0], 100 + i))
                   for i in range(40)]
        answers = [(i, named, expected, f.result()) for i, named, expected, f in futures]
    elapsed = time.perf_counter() - started
    print(f"\n40 requests from {CLIENTS} clients in {elapsed:.1f} s")

    replicas_of: dict[str, set[str]] = {}
    for i, named, expected, response in answers:
        assert response.status_code == 200, (i, response.text)
        assert _image(response).size == (64, 64)
        info = json.loads(response.json()["info"])
        assert info["sd_model_name"] == expected.split(" [")[0], (i, named, info["sd_model_name"])
        assert response.headers["x-sdedge-checkpoint"] == expected
        loaded_before = json.loads(response.headers["x-sdedge-loaded-before"])
        assert expected in loaded_before, (i, expected, loaded_before)
        assert response.headers["x-sdedge-attempts"] == "1"
        replicas_of.setdefault(expected, set()).add(response.headers["x-sdedge-replica"])
    # Both checkpoints were served, by both replicas between them: multiplexing spread the work.
    assert set(replicas_of) == set(titles)
    assert len(set().union(*replicas_of.values())) == 2, replicas_of


def test_progress_and_interrupt_reach_the_replica_holding_the_task(cluster):
    base, titles = cluster.base, cluster.titles
    task = "task(ray-progress-1)"
    body = {"prompt": "a blue square", "steps": 40, "width": 64, "height": 64, "seed": 5, "force_task_id": task,
            "override_settings": {"sd_model_checkpoint": titles[1]}}
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(r=requests.post(f"{base}/sdapi/v1/txt2img", json=body,
                                                                           timeout=300)))
    thread.start()
    deadline = time.time() + 60
    seen = None
    while time.time() < deadline:
        progress = requests.post(f"{base}/internal/progress", json={"id_task": task}, timeout=30).json()
        if progress["active"] and (progress["progress"] or 0) > 0:
            seen = progress
            break
        time.sleep(0.05)
    assert seen is not None, "the task never showed progress through the ingress"
    holder = requests.get(f"{base}/sdedge/v1/ray/tasks", timeout=30).json()["in_flight"][task]
    assert requests.post(f"{base}/sdapi/v1/interrupt", params={"id_task": task}, timeout=30).status_code == 200
    thread.join(120)
    response = result["r"]
    assert response.status_code == 200, response.text
    assert response.headers["x-sdedge-replica"] == holder
    # Interrupted: A1111 returns what the interrupted job made, an image, well before 40 steps.
    assert _image(response).size == (64, 64)
    done = requests.post(f"{base}/internal/progress", json={"id_task": task}, timeout=30).json()
    assert done["completed"] is True


def test_killing_a_replica_mid_run_drops_no_accepted_request(cluster):
    base, titles = cluster.base, cluster.titles
    victim: dict[str, str] = {}
    actors: dict[str, str] = {}

    def client(i: int) -> requests.Response:
        named, _ = _mixed(titles, i)
        response = _txt2img(base, named, seed=500 + i, steps=12)
        if "x-sdedge-replica" in response.headers:
            actors[response.headers["x-sdedge-replica"]] = response.headers["x-sdedge-replica-actor"]
        return response

    # The replicas' actor names, from one answer of each checkpoint.
    for title in titles:
        r = _txt2img(base, title, seed=2)
        actors[r.headers["x-sdedge-replica"]] = r.headers["x-sdedge-replica-actor"]

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            in_flight = requests.get(f"{base}/sdedge/v1/ray/tasks", timeout=30).json()["in_flight"]
            held: dict[str, int] = {}
            for replica in in_flight.values():
                held[replica] = held.get(replica, 0) + 1
            busy = [r for r, n in held.items() if n >= 3 and r in actors]
            if busy:
                victim.update(replica=busy[0], held=str(held[busy[0]]))
                ray.kill(ray.get_actor(actors[busy[0]], namespace="serve"), no_restart=True)
                return
            time.sleep(0.02)

    started = time.perf_counter()
    kill = threading.Thread(target=killer)
    kill.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(client, range(24)))
    kill.join()
    elapsed = time.perf_counter() - started
    assert victim, "no replica ever held three tasks at once: nothing was killed mid-run"
    retried = [r for r in responses if int(r.headers.get("x-sdedge-attempts", "1")) > 1]
    refused = [r for r in responses if r.status_code != 200]
    print(f"\n24 requests, replica {victim['replica']} killed holding {victim['held']} tasks: "
          f"{len(responses) - len(refused)} answered ({len(retried)} after a retry), {len(refused)} refused, "
          f"{elapsed:.1f} s")
    for response in refused:  # a clear error, never a 500 or a silent drop
        assert response.status_code == 503, response.text
        assert set(response.json()) == A1111_ERROR_KEYS
        assert response.json()["error"] == "ReplicaLost"
    for response in responses:
        if response.status_code == 200:
            assert _image(response).size == (64, 64)
    for response in retried:  # sent again: answered by a replica that lives
        assert response.status_code != 200 or response.headers["x-sdedge-replica"] != victim["replica"]
    assert len(retried) + len(refused) >= 1, "the killed replica's jobs were neither retried nor refused"


def test_grpc_txt2img_through_serves_grpc_proxy(cluster):
    import grpc
    from google.protobuf.struct_pb2 import Struct

    from service.generated import sdedge_pb2 as pb
    from service.generated import sdedge_pb2_grpc as pb_grpc

    titles = cluster.titles
    metadata = (("application", "sdedge"),)
    with grpc.insecure_channel(cluster.grpc) as channel:
        stub = pb_grpc.SdEdgeStub(channel)
        for title in titles:
            overrides = Struct()
            overrides.update({"sd_model_checkpoint": title})
            request = pb.Txt2ImgRequest(prompt="a red circle", steps=2, width=64, height=64, seed=3,
                                        override_settings=overrides)
            response = stub.Txt2Img(request, metadata=metadata, timeout=120)
            assert response.task_id.startswith("task(txt2img-")
            assert Image.open(io.BytesIO(response.images[0].data)).size == (64, 64)
            assert json.loads(response.info_json)["sd_model_name"] == title.split(" [")[0]
        overrides = Struct()
        overrides.update({"sd_model_checkpoint": "no-such-model"})
        with pytest.raises(grpc.RpcError) as refused:
            stub.Txt2Img(pb.Txt2ImgRequest(prompt="x", steps=1, width=64, height=64, override_settings=overrides),
                         metadata=metadata, timeout=120)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no-such-model" in refused.value.details()


def _running_replicas() -> int:
    deployment = serve.status().applications["sdedge"].deployments["SdedgeReplica"]
    return deployment.replica_states.get("RUNNING", 0)


def test_replicas_scale_up_on_queue_length(cluster):
    """Last (it replaces the app): one replica, autoscaling to two when jobs wait (target 1 ongoing request)."""
    from service.scale.app import build
    from service.scale.settings import ScaleConfig

    base, titles, server = cluster.base, cluster.titles, cluster.server
    serve.delete("sdedge")
    config = ScaleConfig(server=server, min_replicas=1, max_replicas=2, target_ongoing_requests=1.0,
                         upscale_delay_s=0.0, downscale_delay_s=600.0, num_cpus=1.0)
    serve.run(build(config), name="sdedge", route_prefix="/")
    assert _running_replicas() == 1
    scaled: list[float] = []
    started = time.perf_counter()

    def watch() -> None:
        while time.perf_counter() - started < 90 and not scaled:
            if _running_replicas() == 2:
                scaled.append(time.perf_counter() - started)
            time.sleep(0.2)

    def client(i: int) -> list[requests.Response]:
        # Jobs keep the queue full until the second replica runs (or 90 s): a fixed number of jobs drained before
        # the autoscaler looked when the jobs were fast.
        sent = []
        while time.perf_counter() - started < 90 and not scaled:
            sent.append(_txt2img(base, titles[(i + len(sent)) % 2], seed=900 + i, steps=16))
        return sent

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = [r for sent in pool.map(client, range(CLIENTS)) for r in sent]
    watcher.join()
    print(f"\n{len(responses)} jobs from {CLIENTS} clients on 1 replica: scaled to 2 after "
          f"{scaled[0] if scaled else float('nan'):.1f} s")
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert scaled, "the deployment never scaled to two replicas while jobs waited"

"""GET /metrics, gRPC GetMetrics and the JSON logs of a real `sdedge serve --log-format json` process: every value
is read before and after requests and asserted to move by what those requests did."""

from __future__ import annotations

import json

import grpc
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.generated import metrics_pb2, metrics_pb2_grpc
from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from tests.sdapi_server import Background, running_server, wait_until

SLOW = {"prompt": "a red circle", "width": 256, "height": 256, "steps": 40}


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, parsed by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = requests.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def served(demo_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics-server")
    with running_server(demo_bundle, workdir, "--log-format", "json", second_model=False, grpc=True) as pair:
        yield (*pair, workdir / "server.log")


def test_metrics_move_as_a_generation_runs(served):
    url, _, _ = served
    before = scrape(url)
    # At start: the model was loaded once (and timed), it is the loaded one, the process has memory.
    assert value(before, "sdedge_model_load_seconds_count") >= 1
    assert value(before, "sdedge_model_load_seconds_sum") > 0
    assert sum(v for (name, _), v in before.items() if name == "sdedge_models_loaded") == 1
    assert value(before, "process_resident_memory_bytes") > 50 * 2**20

    r = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a circle", "width": 64, "height": 64, "steps": 3,
                                                        "batch_size": 2, "n_iter": 2}, timeout=120)
    assert r.status_code == 200
    after = scrape(url)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sdedge_images_generated_total") == 4  # 2 batches of 2
    assert moved("sdedge_sampling_steps_total") == 6  # 3 steps per batch
    assert moved("sdedge_step_seconds_count") == 4  # steps 2 and 3 of each batch are timed
    assert moved("sdedge_step_seconds_sum") > 0
    assert moved("sdedge_jobs_total", kind="txt2img", state="done") == 1
    assert moved("sdedge_job_wait_seconds_count", kind="txt2img") == 1
    assert moved("sdedge_job_run_seconds_count", kind="txt2img") == 1
    assert moved("sdedge_job_run_seconds_sum", kind="txt2img") > 0
    # 3 steps × 2 batches, each one UNet call (cond and uncond batched together), plus nothing else.
    assert moved("sdedge_component_call_seconds_count", component="unet") == 6
    assert moved("sdedge_component_call_seconds_count", component="vae_decoder") >= 2
    assert moved("sdedge_component_call_seconds_count", component="text_encoder") >= 1
    assert moved("sdedge_http_requests_total", method="POST", route="/sdapi/v1/txt2img", status="200") == 1
    assert moved("sdedge_http_requests_total", method="GET", route="/metrics", status="200") == 1
    assert moved("sdedge_model_load_seconds_count") == 0  # the loaded model was reused

    # A client's mistake is counted under its status, a path no route has under <unmatched>.
    assert requests.post(f"{url}/sdapi/v1/txt2img", json={"width": 65}, timeout=10).status_code == 422
    assert requests.get(f"{url}/no/such/path", timeout=10).status_code == 404
    later = scrape(url)
    assert value(later, "sdedge_http_requests_total", method="POST", route="/sdapi/v1/txt2img", status="422") == \
        value(after, "sdedge_http_requests_total", method="POST", route="/sdapi/v1/txt2img", status="422") + 1
    assert value(later, "sdedge_http_requests_total", method="GET", route="<unmatched>", status="404") >= 1


def test_queue_length_and_running_job_are_read_live(served):
    url, _, _ = served
    idle = scrape(url)
    assert value(idle, "sdedge_queue_length") == 0 and value(idle, "sdedge_jobs_running") == 0
    first = Background(requests.post, f"{url}/sdapi/v1/txt2img", json=SLOW, timeout=300)
    wait_until(lambda: value(scrape(url), "sdedge_jobs_running") == 1, timeout=60)
    second = Background(requests.post, f"{url}/sdapi/v1/txt2img", json={**SLOW, "steps": 2}, timeout=300)

    def one_waiting():
        m = scrape(url)
        return m if value(m, "sdedge_queue_length") == 1 else None

    busy = wait_until(one_waiting, timeout=30)
    assert value(busy, "sdedge_jobs_running") == 1
    requests.post(f"{url}/sdapi/v1/interrupt", timeout=10)
    assert first.result().status_code == 200 and second.result().status_code == 200
    done = scrape(url)
    assert value(done, "sdedge_queue_length") == 0 and value(done, "sdedge_jobs_running") == 0
    # The second job waited for the first: its wait was observed and is not zero.
    assert value(done, "sdedge_job_wait_seconds_sum", kind="txt2img") > value(busy, "sdedge_job_wait_seconds_sum",
                                                                                 kind="txt2img")


def test_grpc_metrics_rpc_counts_calls_by_code(served):
    url, target, _ = served
    with grpc.insecure_channel(target) as channel:
        metrics = metrics_pb2_grpc.MetricsStub(channel)
        sdedge = pb_grpc.SdEdgeStub(channel)
        before = parse(metrics.GetMetrics(metrics_pb2.GetMetricsRequest()).text)
        sdedge.GetProgress(pb.GetProgressRequest())
        with pytest.raises(grpc.RpcError) as err:
            sdedge.Interrupt(pb.InterruptRequest(task_id="task(nope)"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        response = metrics.GetMetrics(metrics_pb2.GetMetricsRequest())
    assert response.content_type.startswith("text/plain")
    after = parse(response.text)
    progress, interrupt = "/sdedge.v1.SdEdge/GetProgress", "/sdedge.v1.SdEdge/Interrupt"
    assert value(after, "sdedge_grpc_requests_total", method=progress, code="OK") == \
        value(before, "sdedge_grpc_requests_total", method=progress, code="OK") + 1
    assert value(after, "sdedge_grpc_requests_total", method=interrupt, code="NOT_FOUND") == \
        value(before, "sdedge_grpc_requests_total", method=interrupt, code="NOT_FOUND") + 1
    # The same registry as REST's /metrics.
    assert value(after, "sdedge_model_load_seconds_count") == value(scrape(url), "sdedge_model_load_seconds_count")


def test_json_logs_join_the_access_line_and_the_job_lines_by_task_id(served):
    url, _, log_path = served
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 2}, timeout=120)
    task_id = r.headers["X-Task-Id"]

    def lines():
        out = []
        for line in log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        found = [entry for entry in out if entry.get("task_id") == task_id]
        return found if len(found) >= 3 else None

    entries = wait_until(lines, timeout=10)
    events = {e["event"]: e for e in entries}
    assert events["access"]["route"] == "/sdapi/v1/txt2img" and events["access"]["status"] == 200
    assert events["access"]["duration_s"] > 0
    assert events["job_start"]["kind"] == "txt2img" and events["job_start"]["wait_s"] >= 0
    assert events["job_end"]["state"] == "done" and events["job_end"]["run_s"] > 0
    # Every line the server wrote is one JSON object (uvicorn's own lines too).
    text = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in text), [line for line in text if not line.startswith("{")][:3]


def test_metrics_are_behind_api_auth(tmp_path):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(models_dir=tmp_path, options_file=tmp_path / "config.json", api_auth="u:p"))
    try:
        client = TestClient(create_app(state))
        denied = client.get("/metrics")
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Basic"
        allowed = client.get("/metrics", auth=("u", "p"))
        assert allowed.status_code == 200
        # The refused scrape itself was counted, under the status it got.
        assert value(parse(allowed.text), "sdedge_http_requests_total", method="GET", route="<unmatched>",
                     status="401") == 1
    finally:
        state.close()


def test_four_concurrent_clients_share_unet_batches_with_the_images_they_get_alone(demo_bundle, tmp_path, served):
    """Against `--batch-max 4 --batch-window-ms 500`: four clients at once get the images the (unbatched) server
    above gives them one by one, and the batching server made fewer UNet calls than four jobs alone would."""
    from concurrent.futures import ThreadPoolExecutor

    plain_url = served[0]
    bodies = [{"prompt": "a red circle", "seed": 50 + i, "width": 64, "height": 64, "steps": 5} for i in range(4)]
    alone = [requests.post(f"{plain_url}/sdapi/v1/txt2img", json=b, timeout=120).json()["images"] for b in bodies]
    with running_server(demo_bundle, tmp_path, "--batch-max", "4", "--batch-window-ms", "500",
                        second_model=False) as url:
        requests.post(f"{url}/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 1}, timeout=120)  # warm
        before = scrape(url)
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda b: requests.post(f"{url}/sdapi/v1/txt2img", json=b, timeout=120), bodies))
        after = scrape(url)
    assert [r.json()["images"] for r in together] == alone  # PNG bytes (base64), infotext included
    unet = value(after, "sdedge_component_call_seconds_count", component="unet") - \
        value(before, "sdedge_component_call_seconds_count", component="unet")
    assert unet < 4 * 5, unet  # alone: 5 calls each
    assert value(after, "sdedge_images_generated_total") - value(before, "sdedge_images_generated_total") == 4

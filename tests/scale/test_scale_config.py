"""service/scale without a Ray cluster: the `serve run` config, the app it builds, the ingress's retry rules
(with a stand-in replica handle), and that nothing outside service/scale imports ray."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
yaml = pytest.importorskip("yaml")

from ray.exceptions import ActorDiedError  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from service.http.errors import error_body, http_status  # noqa: E402
from service.runtime.state import ServerConfig  # noqa: E402
from service.scale.app import app_builder  # noqa: E402
from service.scale.errors import ReplicaLost  # noqa: E402
from service.scale.forward import Answer, Forwarded  # noqa: E402
from service.scale.ingress import SdapiIngress  # noqa: E402
from service.scale.settings import ScaleConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "ray-serve.yaml"


def _args() -> dict:
    return yaml.safe_load(CONFIG.read_text())["applications"][0]["args"]


def test_the_documented_config_is_a_valid_serve_config_and_builds_the_app():
    schema = ServeDeploySchema(**yaml.safe_load(CONFIG.read_text()))
    assert schema.applications[0].import_path == "service.scale.app:app_builder"
    ingress = app_builder(_args())._bound_deployment
    replicas = ingress.init_args[0]._bound_deployment
    assert (ingress.name, replicas.name) == ("SdapiIngress", "SdedgeReplica")
    assert replicas.ray_actor_options == {"num_cpus": 1, "num_gpus": 0}
    autoscaling = replicas._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 4, 2)
    assert replicas._deployment_config.max_ongoing_requests == 32
    server = replicas.init_args[0]
    assert isinstance(server, ServerConfig) and server.models_dir == Path("models")
    assert server.lora_dirs == [Path("models/Lora"), Path("models/LyCORIS")]


def test_gpu_variant_and_unknown_args():
    config = ScaleConfig.from_args({**_args(), "num_gpus": 0.5, "providers": "cuda"})
    assert (config.num_gpus, config.server.providers) == (0.5, "cuda")
    with pytest.raises(ValueError, match="num_gpu"):
        ScaleConfig.from_args({"num_gpu": 1})


class _Stream:
    """A replica's streamed answer: these events, then `error` (a replica that died) if given."""

    def __init__(self, events, error):
        self.events, self.error = list(events), error

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.events:
            return self.events.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration


class _Handle:
    """Stands in for the replicas' DeploymentHandle: each call plays the next script."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.sent: list[tuple[dict, str, str]] = []
        self.generate = self

    def options(self, **options):
        self.model = options.get("multiplexed_model_id")
        return self

    def remote(self, request: Forwarded, task: str):
        self.sent.append((json.loads(request.body), task, self.model))
        return _Stream(*self.scripts.pop(0))


def _ingress(handle, **config) -> SdapiIngress:
    plain = SdapiIngress.__mro__[1]  # the class as written, under Serve's ASGI wrapper
    assert plain.__name__ == "SdapiIngress" and "ASGI" not in plain.__bases__[0].__name__
    ingress = object.__new__(plain)  # the routing logic alone
    ingress.replicas, ingress.config = handle, ScaleConfig(**config)
    ingress.models = type("NoModels", (), {"find": lambda self, name: None, "refresh": lambda self: None})()
    ingress.default = "sdedge-shapes"
    ingress.in_flight, ingress.finished = {}, {}
    return ingress


def _request(body: dict) -> Forwarded:
    return Forwarded("POST", "/sdapi/v1/txt2img", body=json.dumps(body).encode(),
                     headers=((b"content-type", b"application/json"),))


ACCEPTED = {"event": "accepted", "replica": "r1", "task": "t"}
STARTED = {"event": "started", "task": "t"}
ANSWER = {"event": "answer", "answer": Answer(200, [(b"content-type", b"application/json")], b'{"images": []}')}


def test_a_job_whose_replica_died_is_sent_again_with_its_task_id():
    handle = _Handle([([ACCEPTED], ActorDiedError()), ([ACCEPTED, STARTED], ActorDiedError()),
                      ([ACCEPTED, STARTED, ANSWER], None)])
    ingress = _ingress(handle, max_retries=2)
    response = asyncio.run(ingress.generate(_request({"prompt": "x"}), "txt2img"))
    assert response.status_code == 200 and dict(response.headers)["x-sdedge-attempts"] == "3"
    bodies = [body for body, _, _ in handle.sent]
    task = bodies[0]["force_task_id"]
    assert task.startswith("task(txt2img-") and all(b["force_task_id"] == task for b in bodies)
    assert all(model == "sdedge-shapes" for _, _, model in handle.sent)  # no override: the configured one
    assert ingress.in_flight == {} and ingress.finished == {task: "r1"}


def test_retries_exhausted_or_a_started_job_not_retried_is_a_503_in_a1111_shape():
    handle = _Handle([([ACCEPTED], ActorDiedError()), ([], ActorDiedError())])
    with pytest.raises(ReplicaLost) as lost:
        asyncio.run(_ingress(handle, max_retries=1).generate(_request({"force_task_id": "mine"}), "txt2img"))
    assert len(handle.sent) == 2 and "mine" in str(lost.value)

    handle = _Handle([([ACCEPTED, STARTED], ActorDiedError())])
    with pytest.raises(ReplicaLost, match="after the job started"):
        asyncio.run(_ingress(handle, max_retries=2, retry_started=False).generate(_request({}), "txt2img"))
    assert len(handle.sent) == 1
    assert http_status(lost.value) == 503
    assert set(error_body(lost.value)) == {"error", "detail", "body", "errors"}


def test_only_service_scale_imports_ray():
    code = ("import sys; import engine.pipeline, service.http.app, service.rpc.server, service.cli.commands; "
            "service.cli.commands.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

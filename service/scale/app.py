"""The Ray Serve application: `build(config)` in Python, `app_builder` for `serve run deploy/ray-serve.yaml`."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from service.scale.ingress import SdapiIngress
from service.scale.replica import replica_class
from service.scale.routing import TaskAffinityRouter
from service.scale.settings import ScaleConfig

APP_NAME = "sdedge"


def build(config: ScaleConfig) -> Application:
    """Ingress (one replica: it holds the task → replica map) → sdedge replicas, autoscaled on queue length."""
    replicas = serve.deployment(
        replica_class(config.models_per_replica),
        name="SdedgeReplica",
        autoscaling_config=config.autoscaling(),
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        request_router_config=RequestRouterConfig(request_router_class=TaskAffinityRouter),
        # A checkpoint's unload waits for its accepted jobs; a replica scaled down gets the drain timeout.
        graceful_shutdown_timeout_s=config.server.drain_timeout,
    ).bind(config.server)
    ingress = serve.deployment(SdapiIngress, name="SdapiIngress", num_replicas=1,
                               ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(replicas, config)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run` / a RayService's `import_path: service.scale.app:app_builder` with `args:`."""
    return build(ScaleConfig.from_args(dict(args or {})))

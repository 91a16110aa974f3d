"""`sdedge serve --ray`: the same server configuration, run as the Ray Serve app. This module imports ray only
inside `serve_on_ray`, so the command line works without the `ray` extra."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("sdedge")

GRPC_SERVICER = "service.generated.sdedge_pb2_grpc.add_SdEdgeServicer_to_server"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray Serve (extra `ray`, docs/scale-out.md)")
    group.add_argument("--ray", action="store_true",
                       help="serve on Ray Serve: an sdapi ingress and autoscaled replicas, each holding sdedge "
                       "runtimes; requests go to a replica that has their checkpoint loaded")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray started here)")
    group.add_argument("--ray-min-replicas", type=int, default=1, metavar="N")
    group.add_argument("--ray-max-replicas", type=int, default=2, metavar="N")
    group.add_argument("--ray-target-queue", type=float, default=2.0, metavar="JOBS",
                       help="autoscaling target: waiting + running jobs per replica (default 2)")
    group.add_argument("--ray-models-per-replica", type=int, default=2, metavar="N",
                       help="checkpoints one replica keeps loaded (default 2)")
    group.add_argument("--ray-num-cpus", type=float, default=1.0, metavar="CPUS", help="per replica (default 1)")
    group.add_argument("--ray-num-gpus", type=float, default=0.0, metavar="GPUS",
                       help="per replica (default 0; 1 or a fraction on GPU nodes, with --providers cuda)")


def serve_on_ray(config, args: argparse.Namespace) -> int:
    """Start (or join) Ray, start Serve's HTTP proxy on --host/--port, run the app until interrupted."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise SystemExit(f"--ray needs the ray extra (pip install 'sdedge[ray]'): {exc}") from None
    from service.cli.commands import DEFAULT_GRPC_PORT
    from service.scale.app import APP_NAME, build
    from service.scale.settings import ScaleConfig

    scale = ScaleConfig(server=config, min_replicas=args.ray_min_replicas, max_replicas=args.ray_max_replicas,
                        target_ongoing_requests=args.ray_target_queue,
                        models_per_replica=args.ray_models_per_replica, num_cpus=args.ray_num_cpus,
                        num_gpus=args.ray_num_gpus)
    # Workers import sdedge from where this process does (a source checkout as well as an installed package).
    source = str(Path(__file__).resolve().parents[2])
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    # A local Ray started here runs without its dashboard (about ten processes, ~1 GB); a cluster keeps its own.
    local = {} if address else {"include_dashboard": False}
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": source}}, **local)
    # SIGTERM stops like Ctrl-C: Serve and the local Ray go down with this process instead of outliving it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    host = "0.0.0.0" if args.listen else args.host
    try:
        # sdedge.v1.SdEdge through Serve's gRPC proxy: Txt2Img and Img2Img (service/scale/ingress.py).
        grpc_port = DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port
        grpc = {"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]} if grpc_port else None
        serve.start(http_options={"host": host, "port": args.port}, grpc_options=grpc)
        serve.run(build(scale), name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0

"""How the Ray Serve app is shaped: the sdedge server configuration every replica runs, and the deployment's
replicas, autoscaling, resources and retries (docs/scale-out.md)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from service.runtime.state import ServerConfig

_PATHS = {"model", "models_dir", "options_file", "upscalers_dir", "face_restorers_dir", "vae_path", "data_dir",
          "local_images_dir"}
_PATH_LISTS = {"lora_dirs", "vae_dirs"}


@dataclass
class ScaleConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # Replicas: min == max is a fixed count. Ray's default autoscaling policy keeps each replica's ongoing
    # requests (= its sdedge queue: waiting + running jobs) near `target_ongoing_requests`.
    min_replicas: int = 1
    max_replicas: int = 2
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    # Requests a replica accepts at once; above it Ray's router waits or picks another replica. High, because a
    # replica that refuses makes multiplexing fall back to a replica without the checkpoint.
    max_ongoing_requests: int = 32
    models_per_replica: int = 2  # checkpoints one replica keeps loaded (multiplexing's LRU)
    num_cpus: float = 1.0  # per replica (ray_actor_options)
    num_gpus: float = 0.0  # per replica; 1 (or a fraction) on a GPU cluster, with --providers cuda/tensorrt
    max_retries: int = 2  # sends of a job again after its replica died
    retry_started: bool = True  # False: a job whose replica died after it started gets the 503 instead
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 120.0

    def autoscaling(self) -> dict[str, Any]:
        config = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                  "target_ongoing_requests": self.target_ongoing_requests,
                  "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}
        if self.initial_replicas is not None:
            config["initial_replicas"] = self.initial_replicas
        return config

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ScaleConfig:
        """From `serve run`'s `args:` (deploy/ray-serve.yaml): the keys of this class, and any ServerConfig
        field (`models_dir`, `model`, `providers`, ...) for the sdedge runtimes."""
        own = {f.name for f in fields(cls)} - {"server"}
        server_fields = {f.name for f in fields(ServerConfig)}
        unknown = set(args) - own - server_fields
        if unknown:
            raise ValueError(f"unknown sdedge Ray Serve args: {', '.join(sorted(unknown))}")
        server = {}
        for key, value in args.items():
            if key in server_fields:
                if key in _PATHS and value is not None:
                    value = Path(value)
                elif key in _PATH_LISTS:
                    value = [Path(v) for v in value]
                server[key] = value
        base = ServerConfig(**server)
        if "lora_dirs" not in server and base.models_dir is not None:
            base.lora_dirs = [base.models_dir / "Lora", base.models_dir / "LyCORIS"]
        return cls(server=base, **{k: v for k, v in args.items() if k in own})

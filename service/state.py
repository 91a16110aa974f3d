"""What one server process holds: options, the model registry, the job queue; shared by REST and gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from service.jobs import JobQueue
from service.models import ModelEntry, ModelRegistry
from service.options import Options


class NoModelLoaded(Exception):
    pass


@dataclass
class ServerConfig:
    model: Path | None = None
    models_dir: Path | None = None
    providers: str = "cpu"
    max_queue: int = 64
    options_file: Path | None = None
    api_auth: str | None = None
    api_log: bool = False
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    extra: dict = field(default_factory=dict)


class ServerState:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.options = Options(config.options_file)
        self.models = ModelRegistry(config.models_dir, [config.model] if config.model else [], config.providers)
        self.queue = JobQueue(max_pending=config.max_queue)

    def default_entry(self) -> ModelEntry:
        """The checkpoint named by the option `sd_model_checkpoint`, else the first known one."""
        wanted = self.options.get("sd_model_checkpoint")
        entry = self.models.find(wanted) if wanted else None
        if entry is None:
            entries = self.models.entries()
            if not entries:
                raise NoModelLoaded("no model available")
            entry = entries[0]
        return entry

    def load_default(self):
        entry = self.default_entry()
        pipeline = self.models.load(entry)
        if self.options.get("sd_model_checkpoint") != entry.title:
            self.options.update({"sd_model_checkpoint": entry.title, "sd_checkpoint_hash": entry.sha256 or ""},
                                from_api=False, persist=False)
        return entry, pipeline

    def close(self) -> None:
        self.queue.close()

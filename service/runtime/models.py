"""The checkpoints the server knows: bundles in a models directory plus the one given on the command line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.backend import BackendChoice
from engine.bundle import Bundle, is_bundle, load_bundle
from engine.img2img import is_edit_model
from engine.pipeline import Pipeline
from service.runtime.model_cache import PipelineCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A checkpoint as /sd-models lists it: title `name [hash10]`, model_name, hash, sha256, filename."""

    name: str
    path: Path
    sha256: str | None
    # What decides whether two checkpoints can share one latent (hr_checkpoint_name): (architecture, latent
    # channels, VAE scale factor) from the manifest.
    latent_space: tuple[str, int, int] = ("sd1", 4, 8)
    edit_model: bool = False  # an instruct-pix2pix UNet (8 input channels): img2img reads image_cfg_scale

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    def aliases(self) -> set[str]:
        """Names `sd_model_checkpoint` accepts: title, name, filename, short and full hash."""
        names = {self.title, self.name, str(self.path), self.path.name}
        if self.sha256:
            names |= {self.sha256, self.short_hash, self.sha256[:8]}
        return names


# SD 2.x decodes with SD 1.x's VAE (same latents, scale 0.18215) and the SDXL refiner with SDXL's: a hires
# pass may continue across these (A1111 checks nothing; SD 1.x ↔ SDXL latents would only give noise).
LATENT_FAMILY = {"sd2": "sd1", "sdxl-refiner": "sdxl"}


def latent_family(architecture: str) -> str:
    """The latent space a model samples in: SD 2.x shares SD 1.x's, the SDXL refiner its base's."""
    return LATENT_FAMILY.get(architecture, architecture)


def entry_for(bundle: Bundle) -> ModelEntry:
    m = bundle.manifest
    return ModelEntry(name=m.name or bundle.path.name, path=bundle.path.resolve(), sha256=m.source_sha256,
                      latent_space=(latent_family(m.architecture), m.latent_channels, m.vae_scale_factor),
                      edit_model=is_edit_model(m.unet_in_channels))


class ModelRegistry:
    """Known bundles and the loaded pipelines (up to `limit()`, option sd_checkpoints_limit: model_cache.py);
    loading happens on the worker threads that run jobs."""

    def __init__(self, models_dir: Path | None = None, extra: list[Path] | None = None,
                 providers: str | list[str] = "cpu", choice: BackendChoice = BackendChoice()):
        self.models_dir = Path(models_dir) if models_dir else None
        self.extra = [Path(p) for p in (extra or [])]
        self.providers = providers
        self.choice = choice  # --backend / --precision
        self._entries: list[ModelEntry] = []
        self.loader = Pipeline.from_path  # (path, providers) -> Pipeline; the server times it (metrics.py)
        self._cache = PipelineCache(self._load)
        self.refresh()

    def refresh(self) -> None:
        found: dict[Path, ModelEntry] = {}
        candidates = list(self.extra)
        if self.models_dir and self.models_dir.is_dir():
            # Hidden folders are exports in progress (written to `.<name>.tmp-*`, then renamed): never list them.
            candidates += sorted(p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        for path in candidates:
            if is_bundle(path):
                try:
                    entry = entry_for(load_bundle(path))
                except Exception as exc:  # one broken folder must not hide the others
                    log.warning("skipping %s: %s", path, exc)
                    continue
                found.setdefault(entry.path, entry)
        self._entries = list(found.values())

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def find(self, name: str) -> ModelEntry | None:
        for entry in self._entries:
            if name in entry.aliases():
                return entry
        return None

    @property
    def limit(self) -> Callable[[], int]:
        return self._cache.limit

    @limit.setter
    def limit(self, limit: Callable[[], int]) -> None:
        self._cache.limit = limit

    def _load(self, entry: ModelEntry) -> Pipeline:
        log.info("loading %s from %s", entry.title, entry.path)
        return self.loader(entry.path, self.providers, self.choice)

    @property
    def loaded(self) -> tuple[ModelEntry, Pipeline] | None:
        """The most recently used loaded checkpoint and its pipeline."""
        return self._cache.most_recent()

    def loaded_entries(self) -> list[ModelEntry]:
        """Every loaded checkpoint, least recently used first."""
        return [entry for entry, _ in self._cache.items()]

    def pipeline_of(self, entry: ModelEntry) -> Pipeline | None:
        """`entry`'s pipeline if it is loaded (nothing loads, the LRU order is unchanged)."""
        return self._cache.peek(entry)

    def load(self, entry: ModelEntry) -> Pipeline:
        return self._cache.get(entry)

    def load_beside(self, entry: ModelEntry, second: ModelEntry) -> tuple[Pipeline, Pipeline]:
        """`entry`'s pipeline plus `second`'s (a hires or refiner checkpoint). `entry` ends most recently used:
        with sd_checkpoints_limit 1 it stays the resident model once the job ends (A1111 loads the job's model
        back after the hires pass), and `second` is dropped with the job unless the limit keeps it."""
        with self._cache.pinned([entry, second]):  # loading one must not evict the other
            pipeline = self.load(entry)
            other = self.load(second)
            self._cache.touch(entry)
        return pipeline, other

    @contextmanager
    def pinned(self, entries: Sequence[ModelEntry]) -> Iterator[None]:
        """None of `entries` is evicted while a job inside uses them."""
        with self._cache.pinned(entries):
            yield

    def unload(self) -> None:
        """/unload-checkpoint: every pipeline forgotten; running jobs keep theirs, the next job loads again."""
        self._cache.clear()

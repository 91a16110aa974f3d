"""The textual-inversion embeddings a server knows: the files, which of them each model takes, `TI hashes`.

A1111 modules/textual_inversion/textual_inversion.py: EmbeddingDatabase. Its folders (`--embeddings-dir`) are
read recursively, links followed; an unreadable file is logged and left out. The files are read again when a
folder's own mtime changes (checked before every generation, modules/processing.py: process_images_inner), after
every model load (modules/sd_models.py: load_model → force_reload) and on POST /sdapi/v1/refresh-embeddings. A
model takes the embeddings of its text encoders' width (`loaded`, sorted by lower-case name) and lists the others
as `skipped`; with no model loaded there is no width to check and all are `loaded` (A1111's expected_shape -1).
Two files with one name: the last read wins, as A1111's dicts do.

The engine's pipeline holds the table it encodes prompts with; this registry gives each pipeline object its own
split (the LoRA-merged pipelines of service/runtime/loras.py are objects of their own) and re-gives it when the
files change. A pipeline that never got an embedding has an empty table, and is left alone.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.embedding_files import EmbeddingFileError, embedding_width, is_candidate, read_embedding
from engine.textual_inversion import Embedding
from service.runtime.loras import natural_key

log = logging.getLogger(__name__)

_REMOVE_SYMBOLS = str.maketrans("", "", ":,")


class EmbeddingPipeline(Protocol):
    """What the registry needs of engine.pipeline.Pipeline."""

    def set_embeddings(self, embeddings: Mapping[str, Embedding]) -> None: ...

    def accepts_embedding(self, e: Embedding) -> bool: ...

    def embeddings_used(self, prompts: Sequence[str]) -> tuple[Embedding, ...]: ...


@dataclass(frozen=True)
class EmbeddingSplit:
    """One model's view of the files: what it loaded and what it skipped (wrong width), by name."""

    version: int
    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, Embedding] = field(default_factory=dict)


def api_item(e: Embedding) -> dict[str, Any]:
    """A1111 modules/api/api.py: Api.get_embeddings.convert_embedding."""
    return {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
            "shape": embedding_width(e), "vectors": e.n_vectors}


def ti_hashes_text(used: Iterable[Embedding], bundled_names: bool = True) -> str | None:
    """`TI hashes`: "name: shorthash" per embedding used, each once, names without `:` and `,`
    (modules/sd_hijack_clip.py: TextConditionalModel.forward); embeddings without a hash are left out. An
    embedding bundled in a LoRA has the LoRA's name as its hash; with option lora_bundled_ti_to_infotext off
    (`bundled_names`) A1111 still lists it, with an empty hash (BundledTIHash's str() is '' then)."""
    seen: dict[str, str] = {}
    for e in used:
        if e.shorthash:
            shown = e.shorthash if bundled_names or not e.network else ""
            seen.setdefault(e.name.translate(_REMOVE_SYMBOLS), shown)
    return ", ".join(f"{name}: {h}" for name, h in seen.items()) or None


class EmbeddingRegistry:
    def __init__(self, folders: Sequence[Path]):
        self.folders = [Path(f) for f in folders]
        self._lock = threading.RLock()
        self._files: list[Embedding] = []
        self._errors: dict[str, str] = {}  # path → why it was not read
        self._mtimes: tuple[float | None, ...] = ()
        self._version = 0
        self._splits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.refresh()

    # Files --------------------------------------------------------------------------------------------------

    def _folder_mtimes(self) -> tuple[float | None, ...]:
        mtimes = []
        for folder in self.folders:
            try:
                mtimes.append(folder.stat().st_mtime if folder.is_dir() else None)
            except OSError:
                mtimes.append(None)
        return tuple(mtimes)

    def _scan(self) -> list[Path]:
        found: list[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs.sort(key=natural_key)
                found.extend(sorted((Path(root) / f for f in files), key=lambda p: natural_key(p.name)))
        return [p for p in found if is_candidate(p)]

    def refresh(self) -> None:
        """Read every file again (POST /refresh-embeddings, a model load)."""
        mtimes = self._folder_mtimes()
        files: list[Embedding] = []
        errors: dict[str, str] = {}
        for path in self._scan():
            try:
                embedding = read_embedding(path)
            except (EmbeddingFileError, OSError) as exc:
                log.error("Error loading embedding %s: %s", path.name, exc)
                errors[str(path)] = str(exc)
                continue
            except Exception as exc:  # one odd file must not hide the others (A1111 reports and goes on too)
                log.exception("Error loading embedding %s", path.name)
                errors[str(path)] = str(exc)
                continue
            if embedding is not None:
                files.append(embedding)
        with self._lock:
            self._files, self._errors, self._mtimes = files, errors, mtimes
            self._version += 1

    def refresh_if_changed(self) -> bool:
        """Before a generation: read the files again if a folder's mtime moved (a file added, removed, renamed
        directly inside it; as A1111, an edit in place or inside a subfolder waits for a refresh)."""
        with self._lock:
            unchanged = self._folder_mtimes() == self._mtimes
        if unchanged:
            return False
        self.refresh()
        return True

    def embeddings(self) -> list[Embedding]:
        with self._lock:
            return list(self._files)

    def errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._errors)

    # Models -------------------------------------------------------------------------------------------------

    def split_for(self, pipeline: EmbeddingPipeline | None) -> EmbeddingSplit:
        """Which files the model takes (`accepts_embedding`: its text encoders' width); not stored."""
        with self._lock:
            files, version = list(self._files), self._version
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, Embedding] = {}
        for e in files:
            if pipeline is None or pipeline.accepts_embedding(e):
                loaded[e.name] = e
                skipped.pop(e.name, None)
            else:
                skipped[e.name] = e
                loaded.pop(e.name, None)
        ordered = dict(sorted(loaded.items(), key=lambda item: item[0].lower()))
        return EmbeddingSplit(version, ordered, skipped)

    def apply(self, pipeline: EmbeddingPipeline) -> EmbeddingSplit:
        """Give `pipeline` the embeddings of its width, unless it already has this version of the files. A
        pipeline that has none and would get none is not called (its table is empty from the start)."""
        with self._lock:
            current = self._splits.get(pipeline)
            if current is not None and current.version == self._version:
                return current
        split = self.split_for(pipeline)
        if split.loaded or (current is not None and current.loaded):
            pipeline.set_embeddings(split.loaded)
        with self._lock:
            self._splits[pipeline] = split
        return split

    def after_load(self, loader):
        """Wrap a model loader (service/runtime/models.py: ModelRegistry.loader): each freshly loaded model reads
        the files again and gets its split (A1111 reloads the embeddings after every model load)."""

        def load(*args, **kwargs):
            pipeline = loader(*args, **kwargs)
            self.refresh()
            self.apply(pipeline)
            return pipeline

        return load

    def prepare(self, pipelines: Iterable[EmbeddingPipeline | None]) -> None:
        """Before a generation, on the worker: the files re-read if a folder changed, each pass's pipeline given
        the current split."""
        self.refresh_if_changed()
        for pipeline in pipelines:
            if pipeline is not None:
                self.apply(pipeline)

    def used(self, pipeline: EmbeddingPipeline, prompts: Sequence[str], negative_prompts: Sequence[str] = (),
             **schedule: Any) -> tuple[Embedding, ...]:
        """The embeddings the prompts use on `pipeline`, in first-use order; () when it holds none. `schedule`:
        the job's steps and prompt options (engine/conditioning.py embeddings_used), so a text a prompt edit never
        reaches in this job does not count."""
        with self._lock:
            split = self._splits.get(pipeline)
        if split is None or not (split.loaded or getattr(pipeline, "bundled_embeddings", None)):
            return ()
        return tuple(pipeline.embeddings_used(list(prompts), negative_prompts=list(negative_prompts), **schedule))

    def listing(self, pipeline: EmbeddingPipeline | None) -> dict[str, dict[str, dict[str, Any]]]:
        """GET /sdapi/v1/embeddings for the loaded model (None: no model loaded)."""
        split = self.split_for(pipeline)
        return {"loaded": {name: api_item(e) for name, e in split.loaded.items()},
                "skipped": {name: api_item(e) for name, e in split.skipped.items()}}


def ti_hashes(registry: EmbeddingRegistry, plan, pipeline, hires_pipeline=None,
              bundled_names: bool = True) -> str | None:
    """`TI hashes` of a plan: the embeddings its prompts and negative prompts use on the first pass's model,
    then its hires prompts on the hires pass's model (the embeddings bundled in each pass's LoRAs among them).
    The refiner's conditioning adds nothing: A1111 copies `TI hashes` into the job's infotext before sampling,
    and the refiner's prompts are encoded mid-sampling (modules/processing.py: process_images_inner,
    modules/sd_samplers_common.py: apply_refiner)."""
    schedule = {"steps": plan.total_steps, "use_old_scheduling": plan.use_old_scheduling,
                "options": plan.text_encoder_options}
    used = list(registry.used(pipeline, plan.prompts, plan.negative_prompts, **schedule))
    hires = getattr(plan, "hires", None)
    if hires is not None:
        used += registry.used(hires_pipeline or pipeline, hires.prompts, hires.negative_prompts,
                              hires_steps=hires.steps, **schedule)
    return ti_hashes_text(used, bundled_names)

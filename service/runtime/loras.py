"""The LoRA files a server knows: discovery, A1111's name/alias lookup, hashes, and loaded networks.

A1111 extensions-builtin/Lora/networks.py: list_available_networks (recursive scan of `--lora-dir` and
`--lyco-dir-backcompat`, links followed, hidden folders skipped, natural sort; name = file stem, last one wins;
alias = metadata `ss_output_name`; aliases that occur twice, and `none`/`Addams`, are forbidden and resolve by
stem only), network.py (NetworkOnDisk: metadata, sd_version, hashes), lora_script.py (the API shapes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.lora import LoadedNetwork, NetworkError, load_network
from engine.safetensors_file import SafetensorsError, addnet_hash, read_header
from engine.textual_inversion import Embedding

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".ckpt", ".safetensors")
# Metadata keys A1111 lists first (network.py: NetworkOnDisk.__init__).
_FIRST_KEYS = ("ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images", "ss_tag_frequency")
_ALWAYS_FORBIDDEN_ALIASES = {"none", "Addams"}


def natural_key(text: str) -> list:
    """A1111 modules/shared_items.py natural sort: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _decoded_metadata(raw: dict[str, str]) -> dict:
    """Values starting with `{` are JSON-decoded; A1111's preferred keys first."""
    decoded: dict = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        decoded[key] = value
    ordered = {k: decoded[k] for k in _FIRST_KEYS if k in decoded}
    ordered.update({k: v for k, v in decoded.items() if k not in ordered})
    return ordered


def sd_version(metadata: dict) -> str:
    """network.py: NetworkOnDisk.detect_version."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


@dataclass
class LoraEntry:
    name: str
    path: Path
    metadata: dict = field(default_factory=dict)
    alias: str = ""
    _hash: str | None = None

    @property
    def sd_version(self) -> str:
        return sd_version(self.metadata)

    @property
    def sha256(self) -> str:
        """The addnet hash (safetensors: bytes after the header) or the metadata's `sshs_model_hash`."""
        if self._hash is None:
            stored = self.metadata.get("sshs_model_hash")
            if isinstance(stored, str) and stored:
                self._hash = stored
            elif self.path.suffix.lower() == ".safetensors":
                self._hash = addnet_hash(self.path)
            else:
                import hashlib

                digest = hashlib.sha256()
                with open(self.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                self._hash = digest.hexdigest()
        return self._hash

    @property
    def shorthash(self) -> str:
        return self.sha256[:12]

    def api(self) -> dict:
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


class LoraRegistry:
    """LoRA files under the configured folders, rescanned on demand; loaded networks cached by path and mtime."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._entries: dict[str, LoraEntry] = {}
        self._aliases: dict[str, LoraEntry] = {}
        self._loaded: dict[tuple[str, float], LoadedNetwork] = {}
        self._lock = threading.Lock()
        self.refresh()

    def _scan(self) -> list[Path]:
        found: list[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
                found.extend(Path(root) / f for f in files if Path(f).suffix.lower() in SUFFIXES)
        return sorted(found, key=lambda p: natural_key(str(p)))

    def refresh(self) -> None:
        entries: dict[str, LoraEntry] = {}
        for path in self._scan():
            metadata: dict = {}
            if path.suffix.lower() == ".safetensors":
                try:
                    metadata = _decoded_metadata(read_header(path).metadata)
                except (SafetensorsError, OSError) as exc:
                    log.warning("LoRA %s: unreadable header: %s", path, exc)
            entry = LoraEntry(path.stem, path, metadata)
            entry.alias = str(metadata.get("ss_output_name") or entry.name)
            entries[entry.name] = entry  # a duplicate stem: the last one scanned wins, as in A1111
        counts: dict[str, int] = {}
        for entry in entries.values():
            counts[entry.alias] = counts.get(entry.alias, 0) + 1
        forbidden = {a for a, n in counts.items() if n > 1} | _ALWAYS_FORBIDDEN_ALIASES
        aliases = {e.alias: e for e in entries.values() if e.alias not in forbidden}
        with self._lock:
            self._entries, self._aliases = entries, aliases
            live = {(str(e.path), e.path.stat().st_mtime) for e in entries.values() if e.path.exists()}
            self._loaded = {k: v for k, v in self._loaded.items() if k in live}

    def entries(self) -> list[LoraEntry]:
        with self._lock:
            return list(self._entries.values())

    def find(self, name: str) -> LoraEntry | None:
        """Exact, case-sensitive: the file stem, else an alias that is not forbidden."""
        with self._lock:
            return self._entries.get(name) or self._aliases.get(name)

    def find_by_hash(self, shorthash: str) -> LoraEntry | None:
        for entry in self.entries():
            try:
                if entry.shorthash == shorthash:
                    return entry
            except OSError:
                continue
        return None

    def alias_for_hash(self, shorthash: str) -> str | None:
        """The name a prompt should use for the file with this hash: its alias unless that is forbidden
        (network.py: NetworkOnDisk.get_alias with lora_preferred_name "Alias from file")."""
        entry = self.find_by_hash(shorthash)
        if entry is None:
            return None
        with self._lock:
            usable = self._aliases.get(entry.alias) is entry
        return entry.alias if usable else entry.name

    def load(self, entry: LoraEntry) -> LoadedNetwork:
        key = (str(entry.path), entry.path.stat().st_mtime)
        with self._lock:
            cached = self._loaded.get(key)
        if cached is not None:
            return cached
        network = load_network(entry.path, entry.name)
        with self._lock:
            self._loaded[key] = network
        return network


__all__ = ["LoraEntry", "LoraRegistry", "NetworkError", "natural_key", "sd_version"]


_MODEL_NETWORKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_NETWORKS_LOCK = threading.Lock()


def pipeline_with_networks(pipeline, requests, registry: LoraRegistry | None):
    """The pipeline a pass runs on: `pipeline` itself without networks, else one over merged sessions (cached per
    model and set). Raises NetworkError when a file cannot be applied."""
    from engine.lora import NetworkUse
    from engine.network_sessions import ModelNetworks

    if not requests:
        return pipeline
    with _MODEL_NETWORKS_LOCK:
        networks = _MODEL_NETWORKS.get(pipeline)
        if networks is None:
            networks = _MODEL_NETWORKS[pipeline] = ModelNetworks(pipeline)
    uses = []
    for r in requests:
        path = Path(r.path)
        entry = LoraEntry(r.name, path)
        network = registry.load(entry) if registry is not None else load_network(path, r.name)
        uses.append((network, NetworkUse(r.name, r.te, r.unet, r.dyn), (str(path), path.stat().st_mtime)))
    merged = networks.pipeline_for(uses)[0]
    bundled = bundled_embeddings([(network, use.name) for network, use, _ in uses])
    return merged.with_bundled_embeddings(bundled) if bundled else merged


def bundled_embeddings(networks) -> dict[str, Embedding]:
    """The embeddings bundled in a pass's LoRA files [(LoadedNetwork, name the prompt used)], whatever their
    multipliers: on a name in several files the first network in prompt order wins (A1111 skips a bundled name
    already registered). Each one's `TI hashes` entry is the LoRA's name (networks.py: BundledTIHash)."""
    found: dict[str, Embedding] = {}
    for network, name in networks:
        for emb_name, embedding in network.embeddings.items():
            if emb_name not in found:
                found[emb_name] = replace(embedding, shorthash=name, network=name)
    return found

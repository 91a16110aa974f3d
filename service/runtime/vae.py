"""Separate VAE files as A1111 finds and picks them (A1111 modules/sd_vae.py), exported once per model family.

Discovery (`refresh_vae_list`): `<models>/VAE/**/*.{ckpt,pt,safetensors}`, `*.vae.{ckpt,pt,safetensors}` anywhere
under the models folder and beside a `--model` bundle, and every such file under `--vae-dir`; keyed by basename
(last found wins), natural-sorted. Choice (`resolve_vae`): `--vae-path`; the option `sd_vae` when
`sd_vae_overrides_per_model_preferences` is on and it is not "Automatic"; the checkpoint's user metadata
(`<checkpoint>.json`, key `vae`); a VAE whose basename starts with the checkpoint's name (A1111's prefix quirk);
finally the option. "None", and a name no file has (logged), mean the checkpoint's own VAE.

Each file is exported to ONNX (export/vae_export.py) for the VAE config of the checkpoints that use it, into
`<models>/VAE/.sdedge/<sha256[:16]>-<family>-<config digest[:8]>/`, by a child process (torch never enters the
server). Builds start in the background when the server starts and on /refresh-vae, for every file and every
VAE config among the known checkpoints; a job that needs one still building waits for it on the worker, after
a log line, like a model load. A file that cannot be exported is remembered (until the next refresh) and jobs
that select it fail with a 503 naming the reason.

Family: SD 1.x and 2.x share one VAE architecture and latent space ("sd"); SDXL's VAE has the same shapes but
another latent space, so an SD 1.x VAE on SDXL loads and draws garbage (it does in A1111). A file's family is
known from a `<file>.json` beside it (`"sd version"`: SD1/SD2/SDXL, A1111's user-metadata key), its safetensors
`modelspec.architecture`, or "sdxl" in its name; a known family that is not the checkpoint's is not used
(logged; the checkpoint's own VAE runs), an unknown one is used as A1111 would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.bundle import hash_files
from engine.vae_override import (
    RECORD_NAME,
    ExportedVae,
    install_vae_switch,
    open_exported_vae,
    vae_config_digest,
)
from service.a1111.errors import ModelUnavailable

log = logging.getLogger(__name__)

SUFFIXES = (".ckpt", ".pt", ".safetensors")
AUTOMATIC = ("Automatic", "auto")  # "auto": A1111's legacy value (modules/sd_vae.py: is_automatic)
NONE = "None"
CACHE_FOLDER = ".sdedge"
EXPORT_ERROR = "vae-export error: "  # export/vae_export.py's one-line report of a file it cannot convert
METADATA_FAMILIES = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl"}


def natural_key(text: str) -> list:
    """A1111 modules/shared.py: natural_sort_key."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"([0-9]+)", text)]


def family_of_architecture(architecture: str) -> str:
    """A checkpoint's manifest architecture → the VAE family: SD 1.x and 2.x ("sd1", "sd2", ...) share "sd";
    every SDXL variant (base, refiner, inpainting, Turbo) is "sdxl"; anything else is its own."""
    name = architecture.lower()
    if "xl" in name:
        return "sdxl"
    return "sd" if re.match(r"sd[-_]?[12]", name) else name


@dataclass(frozen=True)
class VaeFile:
    name: str  # basename with extension: the `sd_vae` value and the infotext's `VAE`
    path: Path


@dataclass(frozen=True)
class VaeChoice:
    """The separate VAE one checkpoint runs with for a job, resolved at submit time."""

    file: VaeFile
    sha256: str
    family: str  # the checkpoint's family, for which it is exported
    config: Path  # the checkpoint's VAE config.json

    @property
    def short_hash(self) -> str:
        """A1111's `VAE hash`: the first 10 hex digits of the file's sha256."""
        return self.sha256[:10]


def _walk(folder: Path, pattern: str) -> list[Path]:
    """Files under `folder` matching `pattern` (recursive), skipping hidden folders (our caches, exports in
    progress)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if re.fullmatch(pattern, f, flags=re.IGNORECASE)]
    return found


ANY_VAE = r".*\.(ckpt|pt|safetensors)"
BESIDE_CHECKPOINT = r".*\.vae\.(ckpt|pt|safetensors)"


def discover(models_dir: Path | None, vae_dirs: Iterable[Path] = (), checkpoint_dirs: Iterable[Path] = ()) -> list[VaeFile]:
    """A1111 modules/sd_vae.py: refresh_vae_list, keyed by basename (last wins), natural-sorted."""
    candidates: list[Path] = []
    if models_dir is not None and Path(models_dir).is_dir():
        candidates += _walk(Path(models_dir), BESIDE_CHECKPOINT)
        if (Path(models_dir) / "VAE").is_dir():
            candidates += _walk(Path(models_dir) / "VAE", ANY_VAE)
    for folder in checkpoint_dirs:
        if Path(folder).is_dir():
            candidates += [p for p in sorted(Path(folder).iterdir())
                           if p.is_file() and re.fullmatch(BESIDE_CHECKPOINT, p.name, flags=re.IGNORECASE)]
    for folder in vae_dirs:
        if Path(folder).is_dir():
            candidates += _walk(Path(folder), ANY_VAE)
    by_name: dict[str, Path] = {}
    for path in candidates:
        by_name[path.name] = path.resolve()
    return [VaeFile(name, by_name[name]) for name in sorted(by_name, key=natural_key)]


def safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors header (8-byte little-endian length, then JSON), without torch."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 1024 * 1024:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def file_family(path: Path) -> str | None:
    """The model family a VAE file declares, or None when it says nothing (module docstring)."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            version = str(json.loads(sidecar.read_text()).get("sd version", "")).lower()
        except (OSError, ValueError, AttributeError):
            version = ""
        if version in METADATA_FAMILIES:
            return METADATA_FAMILIES[version]
    if path.suffix.lower() == ".safetensors":
        arch = str(safetensors_metadata(path).get("modelspec.architecture", "")).lower()
        if arch:
            return "sdxl" if "xl" in arch else "sd" if "stable-diffusion-v" in arch else None
    return "sdxl" if "sdxl" in path.name.lower() else None


def _user_metadata_vae(checkpoint: Path) -> str | None:
    """A1111 `resolve_vae_from_user_metadata`: `vae` of the JSON beside the checkpoint (`<checkpoint>.json`)."""
    for sidecar in (checkpoint.with_name(checkpoint.name + ".json"), checkpoint.with_suffix(".json")):
        if sidecar.is_file() and sidecar != checkpoint:
            try:
                value = json.loads(sidecar.read_text()).get("vae")
            except (OSError, ValueError, AttributeError):
                return None
            return value if isinstance(value, str) else None
    return None


class VaeLibrary:
    """The VAE files the server knows, their exports, and the one separate VAE held open."""

    def __init__(self, models_dir: Path | None, vae_dirs: Iterable[Path] = (), checkpoint_dirs: Iterable[Path] = (),
                 providers: str | list[str] = "cpu", vae_path: Path | None = None, cache_dir: Path | None = None,
                 python: str = sys.executable):
        self.models_dir = Path(models_dir) if models_dir else None
        self.vae_dirs = [Path(p) for p in vae_dirs]
        self.checkpoint_dirs = [Path(p) for p in checkpoint_dirs]
        self.providers = providers
        self.vae_path = Path(vae_path) if vae_path else None
        self.cache_dir = Path(cache_dir) if cache_dir else (
            (self.models_dir or Path("models")) / "VAE" / CACHE_FOLDER)
        self.python = python
        self._files: list[VaeFile] = []
        self._hashes: dict[tuple[Path, int, int], str] = {}
        self._failed: dict[Path, str] = {}
        self._key_locks: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()
        self._open: ExportedVae | None = None
        self.refresh()

    # ---- discovery
    def refresh(self) -> None:
        files = discover(self.models_dir, self.vae_dirs, self.checkpoint_dirs)
        if self.vae_path is not None:
            files = [f for f in files if f.name != self.vae_path.name] + [VaeFile(self.vae_path.name,
                                                                                  self.vae_path.resolve())]
        with self._lock:
            self._files = files
            self._failed.clear()

    def files(self) -> list[VaeFile]:
        return list(self._files)

    def find(self, name: str) -> VaeFile | None:
        return next((f for f in self._files if f.name == name), None)

    def sha256(self, file: VaeFile) -> str:
        stat = file.path.stat()
        key = (file.path, stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = hash_files([file.path])
        return self._hashes[key]

    # ---- choice
    def resolve(self, sd_vae: str, overrides_per_model: bool, checkpoint_name: str, checkpoint_path: Path
                ) -> VaeFile | None:
        """A1111 modules/sd_vae.py: resolve_vae → the file, or None for the checkpoint's own VAE."""
        if self.vae_path is not None:
            return self.find(self.vae_path.name)
        automatic = sd_vae in AUTOMATIC
        if overrides_per_model and not automatic:
            return self._from_setting(sd_vae)
        metadata = _user_metadata_vae(Path(checkpoint_path))
        if metadata is not None and metadata not in AUTOMATIC:
            if metadata == NONE:
                return None
            if self.find(metadata) is not None:
                return self.find(metadata)
        # A1111's prefix quirk: any known VAE whose basename starts with the checkpoint's name, not only one
        # beside it.
        near = next((f for f in self._files if f.name.startswith(checkpoint_name)), None)
        if near is not None and (not overrides_per_model or automatic):
            return near
        return self._from_setting(sd_vae)

    def _from_setting(self, sd_vae: str) -> VaeFile | None:
        if sd_vae == NONE or sd_vae in AUTOMATIC:
            return None
        found = self.find(sd_vae)
        if found is None:
            log.warning("Couldn't find VAE named %s; using None instead", sd_vae)  # A1111's own words
        return found

    def choose(self, sd_vae: str, overrides_per_model: bool, entry) -> VaeChoice | None:
        """The separate VAE `entry` (a service.runtime.models.ModelEntry) runs with, or None for its own."""
        file = self.resolve(sd_vae, overrides_per_model, entry.name, entry.path)
        if file is None:
            return None
        family = family_of_architecture(entry.latent_space[0])
        declared = file_family(file.path)
        if declared is not None and declared != family:
            log.warning("VAE %s is for %s models, %s is %s: using the checkpoint's own VAE", file.name, declared,
                        entry.name, family)
            return None
        try:
            sha256 = self.sha256(file)
        except OSError as exc:  # removed or unreadable since the last scan
            raise ModelUnavailable(f"VAE {file.name} cannot be read: {exc.strerror or exc}") from None
        config = Path(entry.path) / "vae_decoder" / "config.json"
        if not config.is_file():
            raise ModelUnavailable(f"VAE {file.name} cannot be used with {entry.name}: its bundle has no VAE config "
                                   f"({config}); re-export the checkpoint")
        return VaeChoice(file, sha256, family, config)

    # ---- exports
    def export_dir(self, choice: VaeChoice) -> Path:
        digest = vae_config_digest(json.loads(choice.config.read_text()))
        return self.cache_dir / f"{choice.sha256[:16]}-{choice.family}-{digest[:8]}"

    def ensure_built(self, choice: VaeChoice, reason: str = "first use") -> Path:
        """The export folder of `choice`, building it first (blocking) if it does not exist yet."""
        out = self.export_dir(choice)
        with self._lock:
            lock = self._key_locks.setdefault(out, threading.Lock())
        if lock.locked():
            log.info("waiting for the export of VAE %s (%s)", choice.file.name, reason)
        with lock:
            if (out / RECORD_NAME).is_file():
                return out
            if out in self._failed:
                raise ModelUnavailable(f"VAE {choice.file.name} cannot be used: {self._failed[out]}")
            log.info("exporting VAE %s for %s models to %s (%s)", choice.file.name, choice.family, out, reason)
            error = self._run_export(choice, out)
            if error is not None:
                self._failed[out] = error
                log.error("VAE %s cannot be used: %s", choice.file.name, error)
                raise ModelUnavailable(f"VAE {choice.file.name} cannot be used: {error}")
            log.info("exported VAE %s", choice.file.name)
            return out

    def _run_export(self, choice: VaeChoice, out: Path) -> str | None:
        root = Path(__file__).resolve().parents[2]  # where the `export` package sits beside `service`
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        command = [self.python, "-m", "export.vae_export", str(choice.file.path), "--config", str(choice.config),
                   "--family", choice.family, "--out", str(out), "--sha256", choice.sha256]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the export did not run: {exc}"
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            reported = [line[len(EXPORT_ERROR):] for line in lines if line.startswith(EXPORT_ERROR)]
            if reported:
                return reported[-1]
            if any("No module named" in line for line in lines):
                return "exporting it needs the export extra (torch, diffusers): " + lines[-1]
            return lines[-1][:400] if lines else f"export exited with {proc.returncode}"
        return None

    def prebuild(self, entries: Iterable) -> threading.Thread:
        """Export every known file for the VAE configs of `entries`, in the background, one at a time."""
        choices = []
        for file in self.files():
            seen = set()
            for entry in entries:
                config = Path(entry.path) / "vae_decoder" / "config.json"
                family = family_of_architecture(entry.latent_space[0])
                declared = file_family(file.path)
                if not config.is_file() or (declared is not None and declared != family):
                    continue
                if (config.read_bytes(), family) in seen:
                    continue
                seen.add((config.read_bytes(), family))
                choices.append((file, family, config))

        def run() -> None:
            for file, family, config in choices:
                try:
                    choice = VaeChoice(file, self.sha256(file), family, config)
                    if not (self.export_dir(choice) / RECORD_NAME).is_file():
                        self.ensure_built(choice, reason="found at start or refresh")
                except Exception as exc:  # noqa: BLE001 - logged; a job that selects it reports it
                    log.warning("VAE %s: %s", file.name, exc)

        thread = threading.Thread(target=run, name="vae-export", daemon=True)
        thread.start()
        return thread

    # ---- use
    def apply(self, pipeline, choice: VaeChoice | None) -> None:
        """Make `pipeline` decode and encode with `choice` (None: the checkpoint's own VAE). On the worker."""
        switch = install_vae_switch(pipeline)
        if choice is None:
            switch.select(None)
            return
        folder = self.ensure_built(choice)
        with self._lock:
            if self._open is None or self._open.path != folder:
                log.info("loading VAE %s from %s", choice.file.name, folder)
                self._open = open_exported_vae(folder, self.providers)  # one separate VAE held, as A1111
            opened = self._open
        switch.select(opened.backend)

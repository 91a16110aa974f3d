"""Another VAE without re-exporting the checkpoint: a backend that routes `vae_encoder`/`vae_decoder` elsewhere.

A1111 loads a separate VAE file's weights into the model (modules/sd_vae.py: load_vae); here the file was exported
once to its own two ONNX components (export/vae_export.py), and `VaeSwitch` sends the pipeline's VAE calls to
them while a job selected it. Both directions switch: decode (txt2img, every pass's output) and encode
(img2img, inpainting conditioning, hires with an image upscaler). The pipeline does not know.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.backend import ExecutionBackend, OrtBackend, TensorSpec
from engine.bundle import Bundle, Manifest, check_component_files

VAE_COMPONENTS = frozenset({"vae_encoder", "vae_decoder"})
RECORD_NAME = "vae.json"  # written by export/vae_export.py


def vae_config_digest(config: dict) -> str:
    """sha256 of a VAE config's architecture keys (diffusers' `_name_or_path`, `_diffusers_version` left out):
    part of an export's cache key, so one file exported for two VAE architectures gets two folders."""
    arch = {k: v for k, v in config.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()


class VaeSwitch:
    """An ExecutionBackend: the checkpoint's own `inner` backend, with the VAE components of `selected` instead
    while one is selected (`select(None)`: the checkpoint's own VAE, A1111's "None")."""

    def __init__(self, inner: ExecutionBackend):
        self.inner = inner
        self.selected: ExecutionBackend | None = None

    def select(self, vae: ExecutionBackend | None) -> None:
        self.selected = vae

    def _backend(self, component: str) -> ExecutionBackend:
        # `vae_decoder:circular` (tiling) is the chosen VAE's graph too.
        chosen = self.selected is not None and component.partition(":")[0] in VAE_COMPONENTS
        return self.selected if chosen else self.inner

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._backend(component).run(component, inputs)

    def input_specs(self, component: str) -> list[TensorSpec]:
        return self._backend(component).input_specs(component)

    def output_names(self, component: str) -> list[str]:
        return self._backend(component).output_names(component)

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def __getattr__(self, name: str):  # bundle, session(), ...: the checkpoint's backend
        return getattr(self.inner, name)


def install_vae_switch(pipeline) -> VaeSwitch:
    """Route `pipeline`'s VAE calls through a `VaeSwitch` (idempotent). The text encoder and UNet keep their
    backend; only `pipeline.backend`, which the VAE calls use, is wrapped."""
    if not isinstance(pipeline.backend, VaeSwitch):
        pipeline.backend = VaeSwitch(pipeline.backend)
    return pipeline.backend


@dataclass(frozen=True)
class ExportedVae:
    """An exported VAE folder (export/vae_export.py) opened as a two-component backend."""

    path: Path
    record: dict
    backend: OrtBackend


def open_exported_vae(path: str | Path, providers: str | list[str] = "cpu") -> ExportedVae:
    """Sessions are created on first use; the weight files are checked against the record first."""
    path = Path(path)
    record = json.loads((path / RECORD_NAME).read_text())
    manifest = Manifest(name=record.get("name", path.name), io=record.get("io", {}))
    check_component_files(path, manifest)
    return ExportedVae(path, record, OrtBackend(Bundle(path=path, manifest=manifest), providers))

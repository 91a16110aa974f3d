"""An sdedge bundle on disk: optimum's ONNX folder layout plus our `manifest.json`.

A folder written by `optimum-cli export onnx` (no manifest) loads too: what the manifest would say is read
from `model_index.json`, the component configs and the ONNX graphs themselves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "sdedge-bundle"
BUNDLE_FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class NoiseScheduleConfig:
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class Manifest:
    """What the run time needs to know about a bundle besides the ONNX files themselves."""

    name: str
    architecture: str = "sd1"
    prediction_type: str = "epsilon"
    latent_channels: int = 4
    unet_in_channels: int = 4
    vae_scale_factor: int = 8
    vae_scaling_factor: float = 0.18215
    text_max_length: int = 77
    text_hidden_size: int = 768
    text_num_layers: int = 12
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    opset: int | None = None
    precision: str = "fp32"
    source_sha256: str | None = None
    source_kind: str = "diffusers"
    exporter: str | None = None
    # component -> {"inputs": {name: [dims]}, "outputs": {...}}; dims are ints or axis names
    io: dict[str, dict] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == 9

    @property
    def short_hash(self) -> str | None:
        """A1111's `Model hash`: the first 10 hex digits of the checkpoint's sha256."""
        return self.source_sha256[:10] if self.source_sha256 else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        data = dict(data)
        data["noise_schedule"] = NoiseScheduleConfig(**data.get("noise_schedule", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    def component_path(self, component: str) -> Path:
        return self.path / component / "model.onnx"

    def has_component(self, component: str) -> bool:
        return self.component_path(component).is_file()

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"


def is_bundle(path: Path) -> bool:
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or (
        (path / "model_index.json").is_file() and (path / "unet" / "model.onnx").is_file()
    )


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    manifest_file = path / MANIFEST_NAME
    if manifest_file.is_file():
        manifest = Manifest.from_dict(json.loads(manifest_file.read_text()))
    elif is_bundle(path):
        manifest = manifest_from_optimum_folder(path)
    else:
        raise FileNotFoundError(f"{path} is not an sdedge bundle (no {MANIFEST_NAME}, no optimum ONNX folder)")
    return Bundle(path=path, manifest=manifest)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def manifest_from_optimum_folder(path: Path) -> Manifest:
    """Derive a manifest for a folder written by `optimum-cli export onnx` (scalar timestep, no clip-skip output)."""
    unet_cfg = _read_json(path / "unet" / "config.json")
    vae_cfg = _read_json(path / "vae_decoder" / "config.json")
    text_cfg = _read_json(path / "text_encoder" / "config.json")
    sched_cfg = _read_json(path / "scheduler" / "scheduler_config.json")
    block_out = vae_cfg.get("block_out_channels", [128, 256, 512, 512])
    return Manifest(
        name=path.name,
        prediction_type=sched_cfg.get("prediction_type", "epsilon"),
        latent_channels=vae_cfg.get("latent_channels", 4),
        unet_in_channels=unet_cfg.get("in_channels", 4),
        vae_scale_factor=2 ** (len(block_out) - 1),
        vae_scaling_factor=vae_cfg.get("scaling_factor", 0.18215),
        text_hidden_size=text_cfg.get("hidden_size", 768),
        text_num_layers=text_cfg.get("num_hidden_layers", 12),
        noise_schedule=NoiseScheduleConfig(
            beta_start=sched_cfg.get("beta_start", 0.00085),
            beta_end=sched_cfg.get("beta_end", 0.012),
            beta_schedule=sched_cfg.get("beta_schedule", "scaled_linear"),
            num_train_timesteps=sched_cfg.get("num_train_timesteps", 1000),
        ),
        source_sha256=hash_files(sorted((path / "unet").glob("*.onnx*"))),
        source_kind="optimum",
    )


def hash_files(files: list[Path]) -> str:
    """sha256 over files in order. For one file this is exactly A1111's checkpoint hash."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

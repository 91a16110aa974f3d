"""An sdedge bundle on disk: optimum's ONNX folder layout plus our `manifest.json`.

A folder written by `optimum-cli export onnx` (no manifest) loads too: what the manifest would say is read
from `model_index.json`, the component configs and the ONNX graphs themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.special_tokens import SpecialTokenIds, TokenizerFilesError, read_special_token_ids

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "sdedge-bundle"
# 2: the prompt's token ids live in a `tokenizer` section and are read from the tokenizer files (issue 20);
# version 1 had them top-level, copied by the exporter from the text encoder's config.
BUNDLE_FORMAT_VERSION = 2
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
    # The ids the prompt path builds chunks with (BOS, EOS and padding), from the bundle's tokenizer files.
    tokenizer: SpecialTokenIds = field(default_factory=SpecialTokenIds)
    # What the text encoder graph's `pooler_output` gathers, baked in at export by transformers from the config's
    # eos_token_id (2 → argmax of the ids, else the first EOS). Informational: nothing in the engine reads it.
    text_pooled_output: str | None = None
    # SDXL ("sdxl", "sdxl-refiner"): the second (OpenCLIP bigG) encoder, its tokenizer's ids (pads with "!" = 0)
    # and the size of its projected pooled output. The refiner has no first encoder (text_hidden_size 0).
    tokenizer_2: SpecialTokenIds | None = None
    text_2_hidden_size: int = 0
    text_2_num_layers: int = 0
    text_pooled_size: int = 0
    # Text encoders exported with an `inputs_embeds` input (textual inversion): component → its token table
    # (fp32 [vocab, D] `.npy`, path relative to the bundle). Empty for older bundles: input_ids only.
    text_token_tables: dict[str, str] = field(default_factory=dict)
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    opset: int | None = None
    precision: str = "fp32"
    source_sha256: str | None = None
    source_kind: str = "diffusers"
    exporter: str | None = None
    # component -> {"inputs": {name: [dims]}, "outputs": {...}}; dims are ints or axis names; "external_data":
    # {file name: bytes} for weights beside model.onnx (checked on load, export/onnx_layout.py)
    io: dict[str, dict] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION
    # Optional: variant ("openvino-bf16") -> its measured error against ONNX Runtime fp32 and its UNet call time
    # (engine/quality_gate.py: GateResult), written by `sdedge gate`; `--backend auto` reads it.
    quality_gate: dict[str, dict] = field(default_factory=dict)
    # Optional: derived graphs inside the bundle ("fp16", "ort-cuda", "trt-ready") -> their components' files,
    # precision and validation gate against the portable fp32 graphs (export/variants/, engine/variants.py).
    variants: dict[str, dict] = field(default_factory=dict)

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == 9

    @property
    def is_sdxl(self) -> bool:
        return self.architecture in ("sdxl", "sdxl-refiner")

    @property
    def bos_token_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def short_hash(self) -> str | None:
        """A1111's `Model hash`: the first 10 hex digits of the checkpoint's sha256."""
        return self.source_sha256[:10] if self.source_sha256 else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        data = dict(data)
        version = data.get("format_version", 1)
        if version > BUNDLE_FORMAT_VERSION:
            raise ValueError(f"bundle format version {version} is newer than this sdedge reads "
                             f"({BUNDLE_FORMAT_VERSION}); update sdedge or re-export the model with this version")
        data["noise_schedule"] = NoiseScheduleConfig(**data.get("noise_schedule", {}))
        if "tokenizer" in data:
            data["tokenizer"] = SpecialTokenIds(**data["tokenizer"])
        else:  # format 1: top-level ids, possibly the text encoder config's legacy 0/2/1 (checked on load)
            legacy = {k: data[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in data}
            data["tokenizer"] = SpecialTokenIds(**legacy)
        if data.get("tokenizer_2") is not None:
            data["tokenizer_2"] = SpecialTokenIds(**data["tokenizer_2"])
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

    def variant_path(self, component: str, variant: str) -> Path | None:
        """The variant's own graph of `component`, or None: no such variant, or the variant keeps the portable
        graph for that component (e.g. an SDXL VAE kept fp32 in "fp16"). Whether to use it: `variant_passed`."""
        from engine.variants import variant_component_path

        return variant_component_path(self, component, variant)

    def variant_passed(self, variant: str) -> bool:
        """True only when the variant's recorded validation gate against the portable graphs passed."""
        from engine.variants import variant_gate_passed

        return variant_gate_passed(self.manifest, variant)

    @property
    def tokenizer_dir(self) -> Path:
        # The SDXL refiner ships only the second (bigG) tokenizer; both use the same CLIP BPE.
        if not (self.path / "tokenizer").is_dir() and (self.path / "tokenizer_2").is_dir():
            return self.path / "tokenizer_2"
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
    check_component_files(path, manifest)
    return Bundle(path=path, manifest=checked_token_ids(path, manifest))


class BundleFilesError(ValueError):
    """A component's weight file is missing or not the size the exporter wrote (an interrupted copy)."""


def check_component_files(path: Path, manifest: Manifest) -> None:
    """Refuse a bundle whose external weight files (`io.<component>.external_data`: name → bytes, written by
    the exporter) are missing or of another size, naming the file, before ONNX Runtime fails mid-load on it.
    Bundles without that record (older exports, optimum folders) are left to ONNX Runtime's own check."""
    for component, entry in manifest.io.items():
        for name, size in (entry.get("external_data") or {}).items():
            file = Path(path) / component / name
            if not file.is_file():
                raise BundleFilesError(f"{file} is missing: it holds the {component} weights ({size} bytes). "
                                       "Copy the whole bundle folder again, or re-export the model.")
            got = file.stat().st_size
            if got != size:
                state = "truncated" if got < size else "not the file this bundle was exported with"
                raise BundleFilesError(f"{file} is {got} bytes, the manifest says {size}: {state}. "
                                       "Copy the whole bundle folder again, or re-export the model.")


def checked_token_ids(path: Path, manifest: Manifest) -> Manifest:
    """The manifest with the token ids of the bundle's tokenizer files, which are what A1111 and diffusers use.

    Bundles exported before format 2 copied the text encoder config's ids, which for official SD 1.5 folders
    are transformers' legacy 0/2/1: every prompt would be encoded with the wrong start and end tokens. The
    ONNX graphs do not depend on these ids, so such a bundle is corrected here, with a warning, not refused.
    """
    folder = Path(path) / "tokenizer"
    if not (folder / "vocab.json").is_file():
        return manifest  # nothing to check against (and nothing to tokenize with)
    try:
        ids = read_special_token_ids(folder)
    except (TokenizerFilesError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the start/end/padding tokens of the bundle's tokenizer: {exc}; "
                         "re-export the model with `python -m export convert SOURCE --out BUNDLE`") from exc
    if ids != manifest.tokenizer:
        log.warning(
            "%s: manifest token ids (bos %d, eos %d, pad %d) disagree with the bundle's tokenizer files "
            "(bos %d, eos %d, pad %d); using the tokenizer's. The bundle was exported by an older sdedge from the "
            "text encoder config's ids; re-export it (`python -m export convert SOURCE --out BUNDLE`) to fix "
            "the manifest.", path, *asdict(manifest.tokenizer).values(), *asdict(ids).values(),
        )
        manifest = replace(manifest, tokenizer=ids)
    return manifest


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def manifest_from_optimum_folder(path: Path) -> Manifest:
    """Derive a manifest for a folder written by `optimum-cli export onnx` (scalar timestep, no clip-skip output)."""
    unet_cfg = _read_json(path / "unet" / "config.json")
    vae_cfg = _read_json(path / "vae_decoder" / "config.json")
    text_cfg = _read_json(path / "text_encoder" / "config.json")
    sched_cfg = _read_json(path / "scheduler" / "scheduler_config.json")
    block_out = vae_cfg.get("block_out_channels", [128, 256, 512, 512])
    manifest = Manifest(
        name=path.name,
        prediction_type=sched_cfg.get("prediction_type", "epsilon"),
        latent_channels=vae_cfg.get("latent_channels", 4),
        unet_in_channels=unet_cfg.get("in_channels", 4),
        vae_scale_factor=2 ** (len(block_out) - 1),
        vae_scaling_factor=vae_cfg.get("scaling_factor", 0.18215),
        text_hidden_size=text_cfg.get("hidden_size", 768),
        text_num_layers=text_cfg.get("num_hidden_layers", 12),
        text_max_length=text_cfg.get("max_position_embeddings", 77),
        tokenizer=(read_special_token_ids(path / "tokenizer") if (path / "tokenizer" / "vocab.json").is_file()
                   else SpecialTokenIds()),
        text_pooled_output=pooled_output_rule(text_cfg.get("eos_token_id", 49407)),
        noise_schedule=NoiseScheduleConfig(
            beta_start=sched_cfg.get("beta_start", 0.00085),
            beta_end=sched_cfg.get("beta_end", 0.012),
            beta_schedule=sched_cfg.get("beta_schedule", "scaled_linear"),
            num_train_timesteps=sched_cfg.get("num_train_timesteps", 1000),
        ),
        source_sha256=hash_files(sorted((path / "unet").glob("*.onnx*"))),
        source_kind="optimum",
    )
    return replace(manifest, **_optimum_sdxl_fields(path, unet_cfg, text_cfg))


def _optimum_sdxl_fields(path: Path, unet_cfg: dict, text_cfg: dict) -> dict:
    """What an optimum SDXL folder (a `text_encoder_2`) adds: the architecture from the UNet's time-id count (6
    base, 5 refiner), the bigG encoder's sizes and its tokenizer's ids; the refiner has no first encoder."""
    text_2_cfg = _read_json(path / "text_encoder_2" / "config.json")
    if not text_2_cfg:
        return {}
    pooled = text_2_cfg.get("projection_dim", 1280)
    n_time_ids = (unet_cfg.get("projection_class_embeddings_input_dim", 2816) - pooled) \
        // unet_cfg.get("addition_time_embed_dim", 256)
    tokenizer_2 = (read_special_token_ids(path / "tokenizer_2") if (path / "tokenizer_2" / "vocab.json").is_file()
                   else SpecialTokenIds(pad_token_id=0))
    fields = {
        "architecture": "sdxl-refiner" if n_time_ids == 5 else "sdxl",
        "tokenizer_2": tokenizer_2,
        "text_2_hidden_size": text_2_cfg.get("hidden_size", 1280),
        "text_2_num_layers": text_2_cfg.get("num_hidden_layers", 32),
        "text_pooled_size": pooled,
    }
    if not text_cfg:
        fields |= {"text_hidden_size": 0, "text_num_layers": 0, "tokenizer": tokenizer_2}
    return fields


def pooled_output_rule(config_eos_token_id: int) -> str:
    """transformers' CLIPTextTransformer rule for `pooler_output` (kept for configs from before its PR #24773):
    eos_token_id 2 in the config → the token at argmax(input_ids), else the first `eos_token_id` token."""
    return "argmax_input_ids" if config_eos_token_id == 2 else f"first_token_{config_eos_token_id}"


def hash_files(files: list[Path]) -> str:
    """sha256 over files in order. For one file this is exactly A1111's checkpoint hash."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

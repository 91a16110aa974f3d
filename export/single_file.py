"""A1111 single-file SD 1.x checkpoint (`.safetensors` / `.ckpt`, LDM key layout) → diffusers pipeline, offline.

The UNet and VAE keys are renamed by diffusers' own LDM converters (the ones `from_single_file` uses) and loaded
strictly, so a missing tensor is an error rather than a silently random layer (`from_single_file` leaves it so);
the CLIP text encoder is a prefix strip. The SD 1.x (v1-inference) configs ship in `configs/sd15`; the tokenizer
is written from the CLIP BPE file in `assets/`, so nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from export.clip_vocab import write_tokenizer_files

SD15_CONFIG_DIR = Path(__file__).parent / "configs" / "sd15"
# The suffixes A1111 lists in models/Stable-diffusion (`.pt` is torch.save's other common suffix).
SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt"})

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# Older SD 1.x checkpoints were saved with transformers < 4.11, before CLIPTextModel grew `text_model.`;
# A1111 renames these on load (sd_models.checkpoint_dict_replacements_sd1).
OLD_CLIP_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
UNET_INPUT_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
CLIP_POSITION_KEY = CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"
CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json")


class SingleFileError(ValueError):
    """The file is not a single-file SD 1.x checkpoint this exporter can convert."""


def is_single_file(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in SUFFIXES


def load_state_dict(path: Path) -> dict:
    """Tensors of a `.safetensors` or pickled checkpoint (unwrapping `state_dict`), on CPU."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            state = load_file(path, device="cpu")
        else:
            # weights_only: a checkpoint from the internet must not run code when it is opened.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError) as exc:
        raise SingleFileError(f"{path.name}: cannot read checkpoint: {exc}") from exc
    except Exception as exc:  # a malformed pickle fails in the unpickler with any exception type
        raise SingleFileError(f"{path.name}: cannot read checkpoint: {exc}") from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise SingleFileError(f"{path.name}: no state dict in the file")
    return state


def normalize_keys(state: dict) -> dict:
    """Old-style CLIP keys → the `text_model.` layout diffusers and A1111 expect."""
    renamed = {}
    for key, value in state.items():
        rest = key[len(CLIP_PREFIX):] if key.startswith(CLIP_PREFIX) else None
        if rest is not None and rest.startswith(OLD_CLIP_PARTS):
            key = CLIP_PREFIX + "text_model." + rest
        renamed[key] = value
    return renamed


def unet_in_channels(state: dict) -> int:
    """The UNet's input channels (4, or 9 for inpainting) of an SD 1.x checkpoint; anything else is refused."""
    keys = state.keys()
    if any(k.startswith("conditioner.") for k in keys):
        raise SingleFileError("SDXL checkpoints are not supported (only SD 1.x)")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise SingleFileError("SD 2.x checkpoints (OpenCLIP text encoder) are not supported (only SD 1.x)")
    parts = {"UNet": UNET_PREFIX, "VAE": VAE_PREFIX, "CLIP text encoder": CLIP_PREFIX}
    missing = [name for name, prefix in parts.items() if not any(k.startswith(prefix) for k in keys)]
    if missing or UNET_INPUT_KEY not in state or CLIP_POSITION_KEY not in state:
        what = ", ".join(missing) or "UNet input / CLIP position embedding"
        raise SingleFileError(f"not an SD 1.x checkpoint in A1111's layout (missing: {what})")
    channels = int(state[UNET_INPUT_KEY].shape[1])
    if channels not in (4, 9):
        raise SingleFileError(f"unsupported UNet input channels {channels} (SD 1.x has 4, inpainting 9)")
    return channels


def write_config_folder(dst: Path, config_dir: Path = SD15_CONFIG_DIR, in_channels: int = 4) -> Path:
    """A diffusers config folder (no weights) from `config_dir`, with the tokenizer and the UNet's input
    channels set (the same configs serve the 9-channel inpainting variant)."""
    for name in CONFIG_FILES:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config_dir / name, target)
    unet_cfg = json.loads((dst / "unet/config.json").read_text())
    unet_cfg["in_channels"] = in_channels
    (dst / "unet/config.json").write_text(json.dumps(unet_cfg, indent=2))
    write_tokenizer_files(dst / "tokenizer")
    return dst


def _text_encoder(state: dict, config_folder: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(config_folder / "text_encoder", local_files_only=True))
    weights = {k[len(CLIP_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    # position_ids is a buffer some checkpoints carry (sometimes corrupted as floats); the model makes its own.
    weights.pop("text_model.embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SingleFileError(f"CLIP text encoder does not match the config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model.eval()


def _diffusers_model(cls, convert, state: dict, config_folder: Path, subfolder: str):
    """`cls` built from its config and loaded strictly with `convert(state)` (LDM keys → diffusers keys)."""
    import torch

    config = cls.load_config(config_folder, subfolder=subfolder, local_files_only=True)
    with torch.device("meta"):
        model = cls.from_config(config)
    try:
        weights = convert(checkpoint=state, config=dict(config))
        model.load_state_dict(weights, strict=True, assign=True)
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:  # missing blocks, shape mismatches
        raise SingleFileError(f"{subfolder} weights do not fit the configured architecture: {exc}") from exc
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise SingleFileError(f"{subfolder} weights missing from the checkpoint: {left[:3]}")
    return model.float().eval()


def load_single_file_pipeline(path: Path, config_dir: Path | None = None):
    """A `StableDiffusionPipeline` (fp32, CPU) from an A1111 single-file SD 1.x checkpoint.

    `config_dir` holds the diffusers configs of the architecture (default: SD 1.5); a checkpoint whose
    tensors do not fit them is refused with a `SingleFileError`.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTokenizer

    config_dir = Path(config_dir or SD15_CONFIG_DIR)
    state = normalize_keys(load_state_dict(path))
    in_channels = unet_in_channels(state)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(Path(tmp), config_dir, in_channels)
        unet = _diffusers_model(UNet2DConditionModel, convert_ldm_unet_checkpoint, state, folder, "unet")
        vae = _diffusers_model(AutoencoderKL, convert_ldm_vae_checkpoint, state, folder, "vae")
        text_encoder = _text_encoder(state, folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        scheduler = PNDMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def export_single_file(path: Path, out: Path, name: str | None = None, config_dir: Path | None = None) -> Path:
    """Convert and export to a bundle; the manifest's hash is the file's sha256, as A1111 hashes it."""
    from export.onnx_export import export_pipeline, source_hash

    path = Path(path)
    pipe = load_single_file_pipeline(path, config_dir)
    return export_pipeline(pipe, out, name=name or path.stem, sha256=source_hash(path), source_kind="single_file")

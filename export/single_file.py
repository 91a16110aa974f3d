"""A1111 single-file checkpoint (`.safetensors` / `.ckpt`, LDM/SGM key layout) → diffusers pipeline, offline.

The family is detected first (export/detect.py, A1111's rules); then the UNet and VAE keys are renamed by
diffusers' own LDM converters (the ones `from_single_file` uses) and loaded strictly, so a missing tensor is an
error rather than a silently random layer (`from_single_file` leaves it so). Text encoders: CLIP-L is a prefix
strip; OpenCLIP (SD 2.x, SDXL bigG) goes through diffusers' `convert_open_clip_checkpoint` (in_proj split into
q/k/v). The diffusers configs of each family ship in `configs/`; tokenizers are written from the CLIP BPE file in
`assets/`, so nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from export.clip_vocab import write_tokenizer_files
from export.detect import (
    ConfigSet,
    Detection,
    SingleFileError,
    detect_state_dict,
    is_v_prediction,
    rename_sgm_turbo,
    yaml_prediction_type,
)

SD15_CONFIG_DIR = Path(__file__).parent / "configs" / "sd15"
# The suffixes A1111 lists in models/Stable-diffusion (`.pt` is torch.save's other common suffix).
SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt"})

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_BIGG_PREFIX = "conditioner.embedders.1.model."
REFINER_BIGG_PREFIX = "conditioner.embedders.0.model."
# Older SD 1.x checkpoints were saved with transformers < 4.11, before CLIPTextModel grew `text_model.`;
# A1111 renames these on load (sd_models.checkpoint_dict_replacements_sd1).
OLD_CLIP_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
UNET_INPUT_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
CLIP_POSITION_KEY = CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"
OPENCLIP_PAD_TOKEN = "!"  # id 0: SD 2.x / SDXL bigG tokenizers (diffusers' folders, A1111's FrozenOpenCLIPEmbedder)


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


def write_config_folder(dst: Path, config_dir: Path = SD15_CONFIG_DIR, in_channels: int = 4,
                        family: str = "sd1") -> Path:
    """A diffusers config folder (no weights) from `config_dir` (every JSON file in it), with its tokenizers and
    the UNet's input channels set (the same configs serve the 9-channel inpainting variant)."""
    config_dir = Path(config_dir)
    for source in sorted(config_dir.rglob("*.json")):
        target = dst / source.relative_to(config_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    unet_cfg = json.loads((dst / "unet/config.json").read_text())
    unet_cfg["in_channels"] = in_channels
    (dst / "unet/config.json").write_text(json.dumps(unet_cfg, indent=2))
    if (dst / "text_encoder").is_dir():
        # SD 1.x and SDXL's first encoder are CLIP (pads with EOS); SD 2.x's only encoder is OpenCLIP.
        write_tokenizer_files(dst / "tokenizer", **({"pad_token": OPENCLIP_PAD_TOKEN} if family == "sd2" else {}))
    if (dst / "text_encoder_2").is_dir():
        write_tokenizer_files(dst / "tokenizer_2", pad_token=OPENCLIP_PAD_TOKEN)
    return dst


def _load_text_model(cls, weights: dict, config_folder: Path, subfolder: str, what: str):
    from transformers import CLIPTextConfig

    model = cls(CLIPTextConfig.from_pretrained(config_folder / subfolder, local_files_only=True))
    # position_ids is a buffer some checkpoints carry (sometimes corrupted as floats); the model makes its own.
    weights.pop("text_model.embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SingleFileError(f"{what} does not match the config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    # fp32 throughout, as the diffusers models above: the shipped SDXL encoder configs say torch_dtype float16,
    # which leaves some of the model built from them in fp16 and breaks the export's fp32 trace.
    return model.float().eval()


def _clip_text_encoder(state: dict, config_folder: Path, prefix: str = CLIP_PREFIX, subfolder: str = "text_encoder"):
    from transformers import CLIPTextModel

    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return _load_text_model(CLIPTextModel, weights, config_folder, subfolder, "CLIP text encoder")


def _openclip_text_encoder(state: dict, config_folder: Path, prefix: str, subfolder: str, with_projection: bool):
    """OpenCLIP (`<prefix>transformer.resblocks.*`, `ln_final`, ...) → transformers CLIPTextModel(WithProjection)
    with diffusers' converter. SD 2.x keeps the first `num_hidden_layers` blocks (23 of 24: A1111's penultimate
    layer, then `ln_final`); SDXL's bigG keeps all 32."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    config = CLIPTextConfig.from_pretrained(config_folder / subfolder, local_files_only=True)
    blocks = prefix + "transformer.resblocks."
    kept = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        if key.startswith(blocks) and int(key[len(blocks):].split(".")[0]) >= config.num_hidden_layers:
            continue  # the blocks after the layer A1111 reads
        if key == prefix + "text_projection" and not with_projection:
            continue
        kept[key] = value
    if prefix + "ln_final.weight" not in kept:
        raise SingleFileError(f"OpenCLIP text encoder incomplete: {prefix}ln_final.weight missing")

    # The converter reads only the model's config (its width, to split in_proj when text_projection is absent).
    weights = convert_open_clip_checkpoint(SimpleNamespace(config=config), kept, prefix=prefix)
    if not with_projection:
        weights.pop("text_projection.weight", None)
    return _load_text_model(cls, weights, config_folder, subfolder, "OpenCLIP text encoder")


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


def _rebuild(model, config_folder: Path, subfolder: str):
    """The same weights under another config of the same architecture (SD 2 base → 768-v), without a copy."""
    import torch

    cls = type(model)
    config = cls.load_config(config_folder, subfolder=subfolder, local_files_only=True)
    config["in_channels"] = model.config.in_channels
    with torch.device("meta"):
        rebuilt = cls.from_config(config)
    rebuilt.load_state_dict(model.state_dict(), strict=True, assign=True)
    return rebuilt.eval()


def _scheduler(folder: Path):
    import diffusers

    name = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(folder, subfolder="scheduler", local_files_only=True)


def read_checkpoint(path: Path, configs: ConfigSet | None = None) -> tuple[dict, Detection]:
    """The state dict (A1111's renames applied) and its detection; SD 2.x still needs the v-probe."""
    state = normalize_keys(load_state_dict(path))
    renamed = rename_sgm_turbo(state, configs)
    try:
        return renamed, detect_state_dict(renamed, configs, sgm_turbo=renamed is not state)
    except SingleFileError as exc:
        raise SingleFileError(f"{Path(path).name}: {exc}") from exc


def detect_single_file(path: Path, configs: ConfigSet | None = None) -> Detection:
    """The full detection of a single file, with SD 2.x's prediction type (`.yaml` beside it, else the v-probe)."""
    return load_single_file_pipeline(path, configs=configs, detection_only=True)


def load_single_file_pipeline(path: Path, config_dir: Path | None = None, configs: ConfigSet | None = None,
                              detection_only: bool = False):
    """A diffusers pipeline (fp32, CPU) from an A1111 single-file checkpoint of any supported family:
    `StableDiffusionPipeline` (SD 1.x, SD 2.x), `StableDiffusionXLPipeline` (SDXL base / inpainting as the
    9-channel UNet), `StableDiffusionXLImg2ImgPipeline` (refiner).

    `configs` are the config folders per family (default: the shipped ones); `config_dir` forces one folder
    whatever the family. A checkpoint whose tensors do not fit them is refused with a `SingleFileError`.
    `detection_only` returns the `Detection` after the (SD 2.x) v-probe instead.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    configs = configs or ConfigSet(sd1=SD15_CONFIG_DIR)
    path = Path(path)
    state, detection = read_checkpoint(path, configs)
    if config_dir is not None:
        detection = replace(detection, config_dir=Path(config_dir))
    if not detection.config_dir.is_dir():
        raise SingleFileError(f"{path.name}: {detection.family} configs not found in {detection.config_dir}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(Path(tmp) / "configs", detection.config_dir, detection.in_channels,
                                     detection.family)
        unet = _diffusers_model(UNet2DConditionModel, convert_ldm_unet_checkpoint, state, folder, "unet")
        if detection.prediction_type is None:  # SD 2.x: 512 eps or 768 v
            kind = yaml_prediction_type(path) or ("v_prediction" if is_v_prediction(unet) else "epsilon")
            if config_dir is not None:  # a forced folder: its configs, with the probed prediction type
                detection = replace(detection, prediction_type=kind)
                _set_prediction_type(folder, kind)
            else:
                detection = detection.with_prediction(kind, configs)
                folder = write_config_folder(Path(tmp) / "probed", detection.config_dir, detection.in_channels,
                                             detection.family)
                unet = _rebuild(unet, folder, "unet")
        elif detection.family == "sd1" and (kind := yaml_prediction_type(path)) is not None:
            # A1111 lets a `.yaml` beside the file override (an SD 1.x v-prediction fine-tune ships one).
            detection = replace(detection, prediction_type=kind)
            _set_prediction_type(folder, kind)
        if detection_only:
            return detection
        vae = _diffusers_model(AutoencoderKL, convert_ldm_vae_checkpoint, state, folder, "vae")
        scheduler = _scheduler(folder)
        return _assemble(detection, state, folder, unet, vae, scheduler)


def _set_prediction_type(folder: Path, kind: str) -> None:
    file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(file.read_text())
    cfg["prediction_type"] = kind
    file.write_text(json.dumps(cfg, indent=2))


def _assemble(detection: Detection, state: dict, folder: Path, unet, vae, scheduler):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    def tokenizer(name: str):
        return CLIPTokenizer.from_pretrained(folder / name, local_files_only=True)

    if detection.family == "sd1":
        return StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=_clip_text_encoder(state, folder), tokenizer=tokenizer("tokenizer"),
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if detection.family == "sd2":
        text_encoder = _openclip_text_encoder(state, folder, OPENCLIP_PREFIX, "text_encoder", with_projection=False)
        return StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer("tokenizer"),
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if detection.family == "sdxl":
        return StableDiffusionXLPipeline(
            unet=unet, vae=vae,
            text_encoder=_clip_text_encoder(state, folder, SDXL_CLIP_PREFIX), tokenizer=tokenizer("tokenizer"),
            text_encoder_2=_openclip_text_encoder(state, folder, SDXL_BIGG_PREFIX, "text_encoder_2",
                                                  with_projection=True),
            tokenizer_2=tokenizer("tokenizer_2"), scheduler=scheduler)
    if detection.family == "sdxl-refiner":
        return StableDiffusionXLImg2ImgPipeline(
            unet=unet, vae=vae, text_encoder=None, tokenizer=None,
            text_encoder_2=_openclip_text_encoder(state, folder, REFINER_BIGG_PREFIX, "text_encoder_2",
                                                  with_projection=True),
            tokenizer_2=tokenizer("tokenizer_2"), scheduler=scheduler, requires_aesthetics_score=True)
    raise SingleFileError(f"no converter for the {detection.family} family")


def export_single_file(path: Path, out: Path, name: str | None = None, config_dir: Path | None = None,
                       configs: ConfigSet | None = None) -> Path:
    """Convert and export to a bundle; the manifest's hash is the file's sha256, as A1111 hashes it. Nothing is
    written at `out` unless the whole export succeeds (export_pipeline renames a finished folder into place)."""
    from export.onnx_export import export_pipeline, source_hash

    path = Path(path)
    pipe = load_single_file_pipeline(path, config_dir, configs)
    return export_pipeline(pipe, out, name=name or path.stem, sha256=source_hash(path), source_kind="single_file")

"""Which model family a checkpoint is, decided as A1111 decides it, before anything is converted or written.

Single files (LDM/SGM key layout) follow A1111's `modules/sd_models_config.py`
(`guess_model_config_from_state_dict`) and `modules/sd_models.py` (the SD-Turbo SGM rename, the SSD-1B test);
SD 2.x's prediction type comes from A1111's v-probe (`is_using_v_parameterization_for_sd2`), run on the
converted UNet (the same weights, so the same numbers). Diffusers folders are read from their configs.

Families (the bundle manifest's `architecture`): "sd1", "sd2", "sdxl", "sdxl-refiner". Turbo models carry no
marker of their own: SDXL-Turbo is an SDXL file and SD-Turbo in LDM layout an SD 2.x (512, eps) file; only the
SGM-layout SD-Turbo is told apart (variant "turbo"), because A1111 renames its keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).parent / "configs"

UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
SD2_CLIP_IN_PROJ = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
SD1_CLIP_POSITION = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SDXL_BIGG_LN = "conditioner.embedders.1.model.ln_final.weight"
SGM_EMBEDDER0_LN = "conditioner.embedders.0.model.ln_final.weight"
SSD1B_PROBE = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
SD3_KEY = "model.diffusion_model.x_embedder.proj.weight"
DEPTH_KEY = "depth_model.model.pretrained.act_postprocess3.0.project.0.bias"
UNCLIP_KEY = "embedder.model.ln_final.weight"
ALT_DIFFUSION_KEY = "cond_stage_model.roberta.embeddings.word_embeddings.weight"
# A1111 (sd_models.checkpoint_dict_replacements_sd2_turbo): SD-Turbo saved by SGM code is an SD 2.1 model whose
# OpenCLIP text encoder sits where SDXL's refiner keeps its bigG one.
SGM_TURBO_RENAME = ("conditioner.embedders.0.", "cond_stage_model.")

LATENT_FAMILY = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl", "sdxl-refiner": "sdxl"}


class SingleFileError(ValueError):
    """The file is not a checkpoint this exporter can convert (the message says what was found)."""


@dataclass(frozen=True)
class ConfigSet:
    """The diffusers config folders per family (the shipped ones; tests substitute reduced-width copies)."""

    sd1: Path = CONFIG_ROOT / "sd15"
    sd2_base: Path = CONFIG_ROOT / "sd2-base"
    sd2_v: Path = CONFIG_ROOT / "sd2-v"
    sdxl_base: Path = CONFIG_ROOT / "sdxl-base"
    sdxl_refiner: Path = CONFIG_ROOT / "sdxl-refiner"


@dataclass(frozen=True)
class Detection:
    family: str  # "sd1" | "sd2" | "sdxl" | "sdxl-refiner"
    variant: str  # "base" | "inpainting" | "instruct-pix2pix" | "turbo"
    prediction_type: str | None  # "epsilon" | "v_prediction"; None for SD 2.x until the v-probe has run
    in_channels: int
    config_dir: Path

    @property
    def latent_family(self) -> str:
        """Checkpoints whose latents another can continue (SD 1.x and 2.x share the VAE latent space)."""
        return LATENT_FAMILY[self.family]

    def with_prediction(self, prediction_type: str, configs: ConfigSet | None = None) -> Detection:
        """SD 2.x after the v-probe (or a `.yaml`): the 768-v or the 512-base configs."""
        configs = configs or ConfigSet()
        config_dir = self.config_dir
        if self.family == "sd2":
            config_dir = configs.sd2_v if prediction_type == "v_prediction" else configs.sd2_base
        return replace(self, prediction_type=prediction_type, config_dir=config_dir)


def _shape(state: Mapping, key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    return tuple(value.shape) if value is not None else None


def _found(state: Mapping) -> str:
    """What the file holds, for an error message: its top-level key prefixes and the shapes A1111 tests."""
    prefixes: dict[str, int] = {}
    for key in state:
        head = ".".join(key.split(".")[:2])
        prefixes[head] = prefixes.get(head, 0) + 1
    listed = ", ".join(f"{p}.* ({n})" for p, n in sorted(prefixes.items())[:8])
    shapes = ", ".join(f"{k}: {list(s)}" for k in (UNET_INPUT, SD2_CLIP_IN_PROJ, SDXL_BIGG_LN, SGM_EMBEDDER0_LN)
                       if (s := _shape(state, k)) is not None)
    return f"{len(state)} tensors; keys {listed or 'none'}" + (f"; {shapes}" if shapes else "")


def rename_sgm_turbo(state: dict, configs: ConfigSet | None = None) -> dict:
    """A1111's load-time rename of an SGM-layout SD-Turbo file (a 1024-wide `embedders.0`) to the SD 2 layout."""
    ln = state.get(SGM_EMBEDDER0_LN)
    if ln is None or ln.shape[0] != openclip_width(configs or ConfigSet()) or SDXL_BIGG_LN in state:
        return state
    old, new = SGM_TURBO_RENAME
    return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}


def detect_state_dict(state: Mapping, configs: ConfigSet | None = None, sgm_turbo: bool = False) -> Detection:
    """The family of an A1111 single-file state dict, by A1111's key and shape rules, in A1111's order.

    `state` is already renamed by `rename_sgm_turbo` (`sgm_turbo` says whether it was). SD 2.x comes back with
    `prediction_type=None`: the v-probe needs the UNet built (`is_v_prediction`).
    """
    configs = configs or ConfigSet()
    unet_in = _shape(state, UNET_INPUT)
    channels = unet_in[1] if unet_in is not None and len(unet_in) == 4 else None

    def need_unet() -> int:
        if channels is None:
            raise SingleFileError(f"no UNet input convolution ({UNET_INPUT}) in the file: {_found(state)}")
        return channels

    if SD3_KEY in state:
        raise SingleFileError("SD 3 checkpoints are not supported (MMDiT, not a UNet)")
    if SDXL_BIGG_LN in state:
        ch = need_unet()
        if SSD1B_PROBE not in state:
            # A1111 (sd_models.py) flags SSD-1B by its missing mid-block transformer and still loads it with
            # the SDXL config (strict=False). Our strict conversion would build random layers: refused.
            raise SingleFileError("SSD-1B (distilled SDXL without a mid-block transformer) is not supported")
        if ch not in (4, 9):
            raise SingleFileError(f"SDXL UNet with {ch} input channels is not supported (4, or 9 for inpainting)")
        return Detection("sdxl", "inpainting" if ch == 9 else "base", "epsilon", ch, configs.sdxl_base)
    if SGM_EMBEDDER0_LN in state:
        return Detection("sdxl-refiner", "refiner", "epsilon", need_unet(), configs.sdxl_refiner)
    if DEPTH_KEY in state:
        raise SingleFileError("SD 2.x depth-to-image checkpoints are not supported (MiDaS depth conditioning)")
    if UNCLIP_KEY in state:
        raise SingleFileError("SD 2.x unCLIP (image variations) checkpoints are not supported")
    clip_proj = _shape(state, SD2_CLIP_IN_PROJ)
    if clip_proj is not None and clip_proj[1] == openclip_width(configs):
        ch = need_unet()
        if ch == 9:
            raise SingleFileError("SD 2.x inpainting checkpoints are not supported (SD 2.x txt2img/img2img "
                                  "checkpoints are; SD 1.x and SDXL inpainting are)")
        if ch != 4:
            raise SingleFileError(f"SD 2.x UNet with {ch} input channels is not supported")
        return Detection("sd2", "turbo" if sgm_turbo else "base", None, ch, configs.sd2_base)
    if ALT_DIFFUSION_KEY in state:
        raise SingleFileError("AltDiffusion (XLM-RoBERTa text encoder) checkpoints are not supported")
    # A1111's default: SD 1.x (v1-inference.yaml), 9 channels inpainting, 8 instruct-pix2pix.
    ch = need_unet()
    if SD1_CLIP_POSITION not in state:
        raise SingleFileError(f"not a Stable Diffusion checkpoint in A1111's layout (no CLIP text encoder "
                              f"{SD1_CLIP_POSITION}): {_found(state)}")
    variant = {4: "base", 9: "inpainting", 8: "instruct-pix2pix"}.get(ch)
    if variant is None:
        raise SingleFileError(f"unsupported UNet input channels {ch} (SD 1.x has 4, inpainting 9, "
                              f"instruct-pix2pix 8)")
    return Detection("sd1", variant, "epsilon", ch, configs.sd1)


def openclip_width(configs: ConfigSet) -> int:
    """The SD 2.x OpenCLIP width A1111 tests for (1024), read from the SD 2 text encoder config in use."""
    try:
        return int(json.loads((configs.sd2_base / "text_encoder" / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError):
        return 1024


def is_v_prediction(unet) -> bool:
    """A1111's v-probe (sd_models_config.is_using_v_parameterization_for_sd2) on a diffusers SD 2 UNet:
    x = 0.5, t = 999, context = 0.5 (2 tokens); v-prediction iff mean(out − x) < −1."""
    import torch

    cfg = unet.config
    x = torch.ones(1, cfg.in_channels, 8, 8) * 0.5
    context = torch.ones(1, 2, cfg.cross_attention_dim) * 0.5
    with torch.no_grad():
        out = unet(x, torch.tensor([999.0]), context, return_dict=False)[0]
    return float((out - x).mean()) < -1


def yaml_prediction_type(checkpoint: Path) -> str | None:
    """The prediction type from a `.yaml` beside the checkpoint (A1111 lets it override detection).

    We read only `model.params.parameterization` ("v" → v_prediction, anything else eps): the architecture
    itself comes from the weights (a yaml naming another one would fail the strict load anyway)."""
    path = Path(checkpoint).with_suffix(".yaml")
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        params = data.get("model", {}).get("params", {}) or {}
    except (yaml.YAMLError, AttributeError, OSError) as exc:
        raise SingleFileError(f"{path.name}: cannot read the config beside the checkpoint: {exc}") from exc
    kind = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    log.info("%s: prediction type %s from %s", Path(checkpoint).name, kind, path.name)
    return kind


def detect_diffusers_folder(folder: Path) -> Detection:
    """The family of a diffusers (or optimum ONNX) folder from its configs: UNet `cross_attention_dim`
    (768 SD 1.x, 1024 SD 2.x, 2048 SDXL, 1280 SDXL refiner), `addition_embed_type`, scheduler
    `prediction_type`."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SingleFileError(f"{folder}: no readable unet/config.json: {exc}") from exc
    try:
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        scheduler = {}
    prediction = scheduler.get("prediction_type", "epsilon")
    ch = int(unet.get("in_channels", 4))
    dim = unet.get("cross_attention_dim")
    text_time = unet.get("addition_embed_type") == "text_time"
    variant = {4: "base", 9: "inpainting", 8: "instruct-pix2pix"}.get(ch, "base")
    if text_time and dim == 2048:
        return Detection("sdxl", variant, prediction, ch, folder)
    if text_time and dim == 1280:
        return Detection("sdxl-refiner", "refiner", prediction, ch, folder)
    try:  # OpenCLIP (SD 2.x) uses GELU, OpenAI's CLIP-L (SD 1.x) quick-GELU: decides for other widths
        act = json.loads((folder / "text_encoder" / "config.json").read_text()).get("hidden_act")
    except (OSError, ValueError):
        act = None
    if dim == 1024 or (dim != 768 and act == "gelu"):
        return Detection("sd2", variant, prediction, ch, folder)
    if dim == 768 or act == "quick_gelu":
        return Detection("sd1", variant, prediction, ch, folder)
    raise SingleFileError(f"{folder}: unknown UNet (cross_attention_dim {dim}, addition_embed_type "
                          f"{unet.get('addition_embed_type')!r}, in_channels {ch})")


def family_of_pipeline(pipe) -> str:
    """The manifest `architecture` of a loaded diffusers pipeline (what export writes)."""
    cfg = pipe.unet.config
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        return "sdxl" if cfg.cross_attention_dim == 2048 else "sdxl-refiner"
    # OpenCLIP ViT-H (SD 2.x) is 1024 wide with GELU; OpenAI's CLIP-L (SD 1.x) 768 with quick-GELU.
    text = pipe.text_encoder.config
    return "sd2" if text.hidden_size == 1024 or text.hidden_act == "gelu" else "sd1"

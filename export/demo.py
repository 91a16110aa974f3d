"""The demo model: a tiny SD 1.x pipeline built deterministically from the configs kept in the repo."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from export.clip_vocab import write_tokenizer_files

CONFIG_DIR = Path(__file__).parent / "configs" / "tiny-sd"
# The same architecture with a 9-channel UNet input (x, mask, masked-image latent): an inpainting model.
INPAINT_CONFIG_DIR = Path(__file__).parent / "configs" / "tiny-sd-inpaint"
DEMO_SEED = 0


def build_demo_pipeline(seed: int = DEMO_SEED, config_dir: Path = CONFIG_DIR):
    """A `StableDiffusionPipeline` on the SD 1.x configs in `config_dir` with random weights drawn from `seed`
    (byte-identical across builds). The tiny demo's configs by default; benchmarks/full_models.py builds SD 1.5's
    (export/configs/sd15). The scheduler comes through `from_config`, which ignores the keys of an official config
    that PNDMScheduler's constructor does not take (clip_sample, ...)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    def cfg(part: str, name: str = "config.json") -> dict:
        data = json.loads((config_dir / part / name).read_text())
        return {k: v for k, v in data.items() if not k.startswith("_")}

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg("unet"))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**cfg("vae"))
    torch.manual_seed(seed + 2)
    text_cfg = {k: v for k, v in cfg("text_encoder").items() if k not in ("architectures", "model_type")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    scheduler = PNDMScheduler.from_config(cfg("scheduler", "scheduler_config.json"))
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    for module in (unet, vae, text_encoder):
        module.eval()
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_demo_pipeline(out: Path, seed: int = DEMO_SEED) -> Path:
    """Save the demo pipeline as a diffusers folder (the input format of the exporter)."""
    pipe = build_demo_pipeline(seed)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def save_demo_inpaint_pipeline(out: Path, seed: int = DEMO_SEED) -> Path:
    """The inpainting variant of the demo model as a diffusers folder."""
    pipe = build_demo_pipeline(seed, INPAINT_CONFIG_DIR)
    pipe.save_pretrained(out, safe_serialization=True)
    return out

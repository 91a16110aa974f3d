"""The shapes model: a small SD 1.x pipeline trained in the repo (export/train_tiny.py) on synthetic shapes.

Architecture from export/configs/shapes-sd, weights from export/weights/shapes-sd (fp16 safetensors, loaded
as fp32). Native size 64×64 px (8×8 latents); any multiple of 8 runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from export.clip_vocab import write_tokenizer_files

CONFIG_DIR = Path(__file__).parent / "configs" / "shapes-sd"
WEIGHTS_DIR = Path(__file__).parent / "weights" / "shapes-sd"
# The inpainting variant (export/train_inpaint.py) stores only its 9-channel UNet; VAE and text encoder are shared.
INPAINT_CONFIG_DIR = Path(__file__).parent / "configs" / "shapes-sd-inpaint"
INPAINT_WEIGHTS_DIR = Path(__file__).parent / "weights" / "shapes-sd-inpaint"
NATIVE_SIZE = 64
COMPONENTS = ("text_encoder", "unet", "vae")


def load_config(part: str, config_dir: Path = CONFIG_DIR) -> dict:
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    data = json.loads((config_dir / part / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def new_components(config_dir: Path = CONFIG_DIR) -> dict:
    """Freshly initialised text encoder, UNet and VAE (the caller seeds torch)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_cfg = load_config("text_encoder", config_dir)
    text_cfg.pop("architectures", None)
    text_cfg.pop("model_type", None)
    return {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**text_cfg)),
        "unet": UNet2DConditionModel(**load_config("unet", config_dir)),
        "vae": AutoencoderKL(**load_config("vae", config_dir)),
    }


def training_record(weights_dir: Path = WEIGHTS_DIR) -> dict:
    """What train_tiny.py wrote next to the weights: measured latent scaling factor, steps, losses, args."""
    return json.loads((weights_dir / "training.json").read_text())


def build_shapes_pipeline(weights_dir: Path = WEIGHTS_DIR, config_dir: Path = CONFIG_DIR):
    """The trained `StableDiffusionPipeline` (fp32, CPU)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    parts = new_components(config_dir)
    for name, module in parts.items():
        state = {k: v.float() for k, v in load_file(weights_dir / f"{name}.safetensors").items()}
        module.load_state_dict(state)
        module.eval()
    # The latent scale is measured on the trained VAE, so it lives with the weights, not in the config.
    parts["vae"].register_to_config(scaling_factor=float(training_record(weights_dir)["vae_scaling_factor"]))
    scheduler = PNDMScheduler(**load_config("scheduler", config_dir))
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    return StableDiffusionPipeline(
        **parts,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_shapes_pipeline(out: Path, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Save the trained pipeline as a diffusers folder (the input format of the exporter)."""
    build_shapes_pipeline(weights_dir).save_pretrained(out, safe_serialization=True)
    return out


def save_shapes_inpaint_pipeline(out: Path, weights_dir: Path = INPAINT_WEIGHTS_DIR) -> Path:
    """The inpainting variant as a diffusers folder: the shapes pipeline with the 9-channel UNet swapped in."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    base = build_shapes_pipeline()
    unet = UNet2DConditionModel(**load_config("unet", INPAINT_CONFIG_DIR))
    unet.load_state_dict({k: v.float() for k, v in load_file(weights_dir / "unet.safetensors").items()})
    pipe = StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet.eval(),
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out

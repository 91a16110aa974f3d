"""Reduced-width SDXL pipelines (base, refiner, inpainting) with random weights, built from the shipped configs.

The configs of export/configs/sdxl-base and sdxl-refiner keep their structure (block types, text-time
embedding, linear projections, the two encoders and their activations); only widths and depths shrink, so
the tests run the real SDXL code paths in seconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from export.clip_vocab import write_tokenizer_files

CONFIGS = Path(__file__).parent / "configs"
# Tiny widths: block channels stay multiples of the 32 GroupNorm groups; encoders keep their activations.
TEXT_1 = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 32}
TEXT_2 = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
          "projection_dim": 48}
TIME_EMBED = 8


def _config(family: str, part: str, name: str = "config.json") -> dict:
    data = json.loads((CONFIGS / family / part / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def tiny_unet_config(refiner: bool = False, in_channels: int = 4) -> dict:
    cfg = _config("sdxl-refiner" if refiner else "sdxl-base", "unet")
    blocks = len(cfg["block_out_channels"])
    context = TEXT_2["hidden_size"] + (0 if refiner else TEXT_1["hidden_size"])
    n_time_ids = 5 if refiner else 6
    cfg.update(
        block_out_channels=[32, 64, 64, 64][:blocks], attention_head_dim=[2, 4, 4, 4][:blocks],
        transformer_layers_per_block=[1, 2, 1, 1][:blocks], layers_per_block=1, cross_attention_dim=context,
        addition_time_embed_dim=TIME_EMBED, sample_size=16, in_channels=in_channels,
        projection_class_embeddings_input_dim=n_time_ids * TIME_EMBED + TEXT_2["projection_dim"],
    )
    return cfg


def tiny_vae_config() -> dict:
    return {**_config("sdxl-base", "vae"), "block_out_channels": [32, 64], "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "sample_size": 32}


def write_tokenizer_2_files(folder: Path) -> None:
    """The bigG tokenizer: CLIP's BPE padding with "!" (id 0), as open_clip pads with zeros."""
    write_tokenizer_files(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((folder / name).read_text())
        data["pad_token"] = "!"
        (folder / name).write_text(json.dumps(data, indent=2))


def build_tiny_sdxl_pipeline(seed: int = 0, refiner: bool = False, inpainting: bool = False):
    """A `StableDiffusionXLPipeline` (`StableDiffusionXLImg2ImgPipeline` for the refiner, `...InpaintPipeline`
    with a 9-channel UNet for inpainting) with random weights drawn from `seed`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    family = "sdxl-refiner" if refiner else "sdxl-base"

    def text_config(part: str, sizes: dict) -> CLIPTextConfig:
        cfg = _config(family, part)
        for key in ("architectures", "model_type", "torch_dtype", "transformers_version"):
            cfg.pop(key, None)
        return CLIPTextConfig(**{**cfg, **sizes})

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(refiner, 9 if inpainting else 4))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config())
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(text_config("text_encoder_2", TEXT_2))
    text_encoder = None
    if not refiner:
        torch.manual_seed(seed + 3)
        text_encoder = CLIPTextModel(text_config("text_encoder", TEXT_1))
    scheduler = EulerDiscreteScheduler.from_config(_config(family, "scheduler", "scheduler_config.json"))
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp) / "1")
        write_tokenizer_2_files(Path(tmp) / "2")
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "1")
        tokenizer_2 = CLIPTokenizer.from_pretrained(Path(tmp) / "2")
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.eval()
    # The refiner has neither CLIP-L nor its tokenizer (diffusers would pair that tokenizer with bigG).
    parts = dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                 tokenizer=None if refiner else tokenizer,
                 tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    if refiner:
        return StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True,
                                                force_zeros_for_empty_prompt=False)
    if inpainting:
        return StableDiffusionXLInpaintPipeline(**parts)
    return StableDiffusionXLPipeline(**parts)

"""The shipped SDXL configs build models with the published parameter counts (on torch's meta device: no memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

CONFIGS = Path(__file__).resolve().parents[2] / "export" / "configs"

# Published sizes of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0 (sum of the safetensors' elements).
# The refiner UNet has 2,259,526,660 (4.52 GB in fp16: sd_xl_refiner_1.0.safetensors' 6.08 GB less bigG and the VAE),
# not the 2,518,122,116 once quoted to us.
CASES = [
    ("sdxl-base", "unet", 2_567_463_684),
    ("sdxl-base", "vae", 83_653_863),
    ("sdxl-base", "text_encoder", 123_060_480),
    ("sdxl-base", "text_encoder_2", 694_659_840),
    ("sdxl-refiner", "unet", 2_259_526_660),
    ("sdxl-refiner", "vae", 83_653_863),
    ("sdxl-refiner", "text_encoder_2", 694_659_840),
]


def _build(folder: Path, component: str):
    config = json.loads((folder / component / "config.json").read_text())
    with torch.device("meta"):
        if component == "unet":
            return diffusers.UNet2DConditionModel.from_config(config)
        if component == "vae":
            return diffusers.AutoencoderKL.from_config(config)
        cls = getattr(transformers, config["architectures"][0])
        return cls(transformers.CLIPTextConfig(**config))


@pytest.mark.parametrize(("family", "component", "expected"), CASES)
def test_parameter_count_matches_published_model(family: str, component: str, expected: int) -> None:
    model = _build(CONFIGS / family, component)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("family", ["sdxl-base", "sdxl-refiner"])
def test_model_index_names_only_shipped_components(family: str) -> None:
    index = json.loads((CONFIGS / family / "model_index.json").read_text())
    shipped = {p.name for p in (CONFIGS / family).iterdir() if p.is_dir()}
    wanted = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None and not k.startswith("tokenizer")}
    assert wanted == shipped


def test_refiner_time_embedding_takes_aesthetic_score() -> None:
    # base: 6 time ids (orig h/w, crop t/l, target h/w); refiner: 5 (orig h/w, crop t/l, aesthetic score)
    for family, n_ids in (("sdxl-base", 6), ("sdxl-refiner", 5)):
        unet = json.loads((CONFIGS / family / "unet" / "config.json").read_text())
        assert unet["projection_class_embeddings_input_dim"] == n_ids * unet["addition_time_embed_dim"] + 1280


def test_sdxl_inpainting_unet_is_the_base_unet_with_nine_input_channels() -> None:
    # diffusers/stable-diffusion-xl-1.0-inpainting-0.1: the base config with in_channels 9 (2,567,478,084 parameters)
    config = json.loads((CONFIGS / "sdxl-base" / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config({**config, "in_channels": 9})
    assert sum(p.numel() for p in unet.parameters()) == 2_567_478_084

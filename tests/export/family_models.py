"""Reduced-width random models of each family, derived from the shipped configs, written both as diffusers folders
and as A1111 single files (LDM/SGM key layout, by an inverse mapping written here, independent of the converter)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.detect import CONFIG_ROOT, ConfigSet
from tests.export.test_single_file import unet_to_ldm, vae_to_ldm

CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json")
TEXT_WIDTH = 32


def reduce_configs(src: Path, dst: Path) -> Path:
    """The shipped SD 1.x/2.x configs at toy width: same block types, attention layout, activations, projection
    kind, scheduler and prediction type; 2 UNet/VAE levels, 1 layer per block, 2 text layers of width 32."""
    for name in CONFIG_FILES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)
    unet = json.loads((dst / "unet/config.json").read_text())
    heads = unet["attention_head_dim"]
    unet.update({
        "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 8,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": TEXT_WIDTH,
        "attention_head_dim": [2, 4] if isinstance(heads, list) else 4,
    })
    (dst / "unet/config.json").write_text(json.dumps(unet, indent=2))
    vae = json.loads((dst / "vae/config.json").read_text())
    vae.update({"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64,
                "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2})
    (dst / "vae/config.json").write_text(json.dumps(vae, indent=2))
    text = json.loads((dst / "text_encoder/config.json").read_text())
    text.update({"hidden_size": TEXT_WIDTH, "intermediate_size": 64, "num_attention_heads": 4,
                 "num_hidden_layers": 2, "projection_dim": 16})
    (dst / "text_encoder/config.json").write_text(json.dumps(text, indent=2))
    return dst


def reduced_config_set(root: Path) -> ConfigSet:
    return ConfigSet(sd1=reduce_configs(CONFIG_ROOT / "sd15", root / "sd15"),
                     sd2_base=reduce_configs(CONFIG_ROOT / "sd2-base", root / "sd2-base"),
                     sd2_v=reduce_configs(CONFIG_ROOT / "sd2-v", root / "sd2-v"))


def probe_mean(unet) -> float:
    """A1111's v-probe quantity mean(unet(0.5, 999, 0.5) − 0.5), computed here on the torch UNet."""
    import torch

    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    with torch.no_grad():
        out = unet(x, torch.tensor([999.0]), torch.full((1, 2, unet.config.cross_attention_dim), 0.5)).sample
    return float((out - x).mean())


def save_sd2_folder(configs: Path, dst: Path, v_prediction: bool, seed: int) -> Path:
    """Random weights for an SD 2.x config folder; the UNet's output bias is shifted so that A1111's v-probe
    gives the intended answer (mean −2 for v, 0 for eps) while the image stays whatever the weights draw."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from export.single_file import write_config_folder

    torch.manual_seed(seed)
    folder = write_config_folder(dst, configs, family="sd2")
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    with torch.no_grad():
        unet.conv_out.bias -= probe_mean(unet) + (2.0 if v_prediction else 0.0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    for module in (unet, vae, text):
        module.save_pretrained(folder / {UNet2DConditionModel: "unet", AutoencoderKL: "vae"}.get(
            type(module), "text_encoder"))
    StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    return folder


def clip_to_openclip(sd: dict, prefix: str, extra_block: bool = True) -> dict:
    """transformers CLIPTextModel → OpenCLIP keys (in_proj = q‖k‖v), plus the 24th block and text_projection a
    real SD 2 file carries beyond diffusers' 23 layers (random: they must be ignored)."""
    import torch

    out = {}
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
    width = sd["text_model.final_layer_norm.weight"].shape[0]
    out[prefix + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    for i in range(layers):
        hf, ldm = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[ldm + f"attn.in_proj_{kind}"] = torch.cat([sd[hf + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[ldm + f"attn.out_proj.{kind}"] = sd[hf + f"self_attn.out_proj.{kind}"]
            out[ldm + f"ln_1.{kind}"] = sd[hf + f"layer_norm1.{kind}"]
            out[ldm + f"ln_2.{kind}"] = sd[hf + f"layer_norm2.{kind}"]
            out[ldm + f"mlp.c_fc.{kind}"] = sd[hf + f"mlp.fc1.{kind}"]
            out[ldm + f"mlp.c_proj.{kind}"] = sd[hf + f"mlp.fc2.{kind}"]
    if extra_block:
        last = f"{prefix}transformer.resblocks.{layers - 1}."
        for key in [k for k in out if k.startswith(last)]:
            out[key.replace(last, f"{prefix}transformer.resblocks.{layers}.")] = torch.randn_like(out[key])
        out[prefix + "text_projection"] = torch.randn(width, width)
        out[prefix + "logit_scale"] = torch.tensor(4.6)
    return out


def write_sd2_single_file(folder: Path, path: Path, sgm: bool = False) -> Path:
    """An SD 2.x diffusers folder saved as A1111 sees SD 2.x files; `sgm`: SD-Turbo's SGM layout
    (`conditioner.embedders.0.model.*`)."""
    from safetensors.torch import load_file, save_file

    def part(name: str) -> tuple[dict, dict]:
        return (load_file(folder / name / "diffusion_pytorch_model.safetensors"),
                json.loads((folder / name / "config.json").read_text()))

    state = {**unet_to_ldm(*part("unet")), **vae_to_ldm(*part("vae"))}
    prefix = "conditioner.embedders.0.model." if sgm else "cond_stage_model.model."
    state.update(clip_to_openclip(load_file(folder / "text_encoder" / "model.safetensors"), prefix))
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


# --- SDXL ---------------------------------------------------------------------------------------------------
# bigG's toy width differs from SD 2's (32): A1111 tells an SGM-layout SD-Turbo from the refiner by this width.
BIGG_WIDTH = 48
TIME_DIM = 8


def reduce_sdxl_configs(src: Path, dst: Path, refiner: bool) -> Path:
    """The shipped SDXL base/refiner configs at toy width (same block kinds, text_time embedding, linear
    projection, scheduler, VAE scale 0.13025)."""
    for source in src.rglob("*.json"):
        target = dst / source.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    time_ids = 5 if refiner else 6  # (orig, crop, aesthetic) vs (orig, crop, target)
    unet = json.loads((dst / "unet/config.json").read_text())
    unet.update({
        "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2], "attention_head_dim": [2, 4], "addition_time_embed_dim": TIME_DIM,
        "cross_attention_dim": BIGG_WIDTH if refiner else TEXT_WIDTH + BIGG_WIDTH,
        "projection_class_embeddings_input_dim": BIGG_WIDTH + time_ids * TIME_DIM,
    })
    (dst / "unet/config.json").write_text(json.dumps(unet, indent=2))
    vae = json.loads((dst / "vae/config.json").read_text())
    vae.update({"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64,
                "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2})
    (dst / "vae/config.json").write_text(json.dumps(vae, indent=2))
    for name, width in (("text_encoder", TEXT_WIDTH), ("text_encoder_2", BIGG_WIDTH)):
        if (dst / name).is_dir():
            text = json.loads((dst / name / "config.json").read_text())
            text.update({"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 4,
                         "num_hidden_layers": 2, "projection_dim": width})
            (dst / name / "config.json").write_text(json.dumps(text, indent=2))
    return dst


def random_sdxl_components(configs: Path, seed: int, in_channels: int = 4) -> dict:
    """name → random-weight model for an SDXL config folder (base: both encoders; refiner: bigG only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet_cfg = UNet2DConditionModel.load_config(configs / "unet")
    unet_cfg["in_channels"] = in_channels
    made = {"unet": UNet2DConditionModel.from_config(unet_cfg),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))}
    if (configs / "text_encoder").is_dir():
        made["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    made["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(configs / "text_encoder_2"))
    # fp32 as a checkpoint's trainer holds them (the encoders' configs say torch_dtype float16)
    return {k: v.float().eval() for k, v in made.items()}


def write_sdxl_single_file(components: dict, path: Path) -> Path:
    """SDXL components saved as A1111 holds SDXL files (SGM layout): `model.diffusion_model.*` with `label_emb`,
    `first_stage_model.*`, `conditioner.embedders.0.transformer.*` (CLIP-L) and `.1.model.*` (bigG; the refiner
    has bigG alone as `embedders.0`)."""
    from safetensors.torch import save_file

    unet = components["unet"]
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    for hf, ldm in (("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2.")):
        for key in [k for k in state if k.startswith("model.diffusion_model." + hf)]:
            state[key.replace(hf, ldm)] = state.pop(key)
    vae = components["vae"]
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    bigg_prefix = "conditioner.embedders.0.model."
    if "text_encoder" in components:
        clip = components["text_encoder"].state_dict()
        state.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip.items()})
        bigg_prefix = "conditioner.embedders.1.model."
    bigg = components["text_encoder_2"].state_dict()
    state.update(clip_to_openclip(bigg, bigg_prefix, extra_block=False))
    state[bigg_prefix + "text_projection"] = bigg["text_projection.weight"].T  # OpenCLIP: x @ P
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def save_sdxl_folder(components: dict, configs: Path, dst: Path, refiner: bool) -> Path:
    """The same components as a diffusers SDXL folder (what users download beside the A1111 file): the
    pipeline class diffusers saves for base / inpainting / refiner, tokenizers as export/sdxl_demo.py writes
    them, the config folder's scheduler."""
    import tempfile

    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTokenizer

    from export.clip_vocab import write_tokenizer_files
    from export.sdxl_demo import write_tokenizer_2_files

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp) / "1")
        write_tokenizer_2_files(Path(tmp) / "2")
        tokenizer = None if refiner else CLIPTokenizer.from_pretrained(Path(tmp) / "1")
        tokenizer_2 = CLIPTokenizer.from_pretrained(Path(tmp) / "2")
    parts = dict(vae=components["vae"], text_encoder=components.get("text_encoder"),
                 text_encoder_2=components["text_encoder_2"], tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                 unet=components["unet"],
                 scheduler=EulerDiscreteScheduler.from_pretrained(configs, subfolder="scheduler"))
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=True,
                                                force_zeros_for_empty_prompt=False)
    elif components["unet"].config.in_channels == 9:
        pipe = StableDiffusionXLInpaintPipeline(**parts)
    else:
        pipe = StableDiffusionXLPipeline(**parts)
    pipe.save_pretrained(dst, safe_serialization=True)
    return dst

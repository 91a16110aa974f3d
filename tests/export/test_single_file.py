"""A1111 single-file checkpoints: an LDM-layout `.safetensors` built here from the demo model converts back to
the same weights, exports to a bundle that draws the same images, carries A1111's hash, and bad files are refused."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import load_bundle
from engine.pipeline import Pipeline
from tests.engine.test_engine_smoke import make_plan

CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json")


# --- diffusers → LDM (the inverse of diffusers' conversion), after diffusers'
# scripts/convert_diffusers_to_original_stable_diffusion.py, generalised from SD 1.5's fixed four blocks to
# any block count and to blocks with or without attention (the tiny demo has attention only in its 2nd block).

UNET_TOP = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
            ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
UNET_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
               ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def _rename(key: str, pairs: list[tuple[str, str]]) -> str:
    for ldm, hf in pairs:
        if key.startswith(hf):
            return ldm + key[len(hf):]
    return key


def unet_to_ldm(sd: dict, config: dict) -> dict:
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    layer = [("middle_block.1.", "mid_block.attentions.0."), ("middle_block.0.", "mid_block.resnets.0."),
             ("middle_block.2.", "mid_block.resnets.1.")]
    for i in range(n):
        for j in range(per):
            layer.append((f"input_blocks.{(per + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                layer.append((f"input_blocks.{(per + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per + 1):
            layer.append((f"output_blocks.{(per + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                layer.append((f"output_blocks.{(per + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            layer.append((f"input_blocks.{(per + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            layer.append((f"output_blocks.{(per + 1) * i + per}.{2 if up_attn[i] else 1}.",
                          f"up_blocks.{i}.upsamplers.0."))
    out = {}
    for key, value in sd.items():
        new = _rename(key, UNET_TOP)
        if "resnets" in key:
            for ldm, hf in UNET_RESNET:
                new = new.replace(hf, ldm)
        out["model.diffusion_model." + _rename(new, layer)] = value
    return out


def vae_to_ldm(sd: dict, config: dict) -> dict:
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    pairs = [("encoder.mid.attn_1.", "encoder.mid_block.attentions.0."),
             ("decoder.mid.attn_1.", "decoder.mid_block.attentions.0.")]
    for part in ("encoder", "decoder"):
        for i in range(2):
            pairs.append((f"{part}.mid.block_{i + 1}.", f"{part}.mid_block.resnets.{i}."))
    for i in range(n):
        for j in range(per):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(per + 1):
            pairs.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
            pairs.append((f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    out = {}
    for key, value in sd.items():
        new = _rename(key, pairs).replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if "attn_1" in new:
            head, _, tail = new.rpartition("attn_1.")
            new = head + "attn_1." + _rename(tail, VAE_ATTN)
            if value.ndim == 2:  # diffusers' linear q/k/v/proj → LDM's 1×1 convs
                value = value.reshape(*value.shape, 1, 1)
        out["first_stage_model." + new] = value
    return out


def write_ldm_checkpoint(diffusers_dir: Path, path: Path) -> Path:
    """The demo model saved as A1111 saves SD 1.x: one safetensors file with LDM keys (and CLIP's position_ids)."""
    import torch
    from safetensors.torch import load_file, save_file

    def part(name: str) -> tuple[dict, dict]:
        return (load_file(diffusers_dir / name / "diffusion_pytorch_model.safetensors"),
                json.loads((diffusers_dir / name / "config.json").read_text()))

    state = {**unet_to_ldm(*part("unet")), **vae_to_ldm(*part("vae"))}
    clip = load_file(diffusers_dir / "text_encoder" / "model.safetensors")
    state.update({"cond_stage_model.transformer." + k: v for k, v in clip.items()})
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    # Training leftovers real checkpoints carry next to the weights; the converter must ignore them.
    state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    state["model_ema.decay"] = torch.tensor(0.9999)
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def copy_configs(diffusers_dir: Path, dst: Path) -> Path:
    """Only the JSON configs of the demo: its weights must come from the single file, not from here."""
    for name in CONFIG_FILES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(diffusers_dir / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def ldm_file(demo_diffusers_dir, tmp_path_factory) -> Path:
    return write_ldm_checkpoint(demo_diffusers_dir, tmp_path_factory.mktemp("ckpt") / "tiny-a1111.safetensors")


@pytest.fixture(scope="module")
def tiny_configs(demo_diffusers_dir, tmp_path_factory) -> Path:
    return copy_configs(demo_diffusers_dir, tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def served_bundle(ldm_file, tiny_configs, tmp_path_factory) -> Path:
    """`sdedge serve --model file.safetensors` exports into --models-dir; the tiny configs stand in for SD 1.5's."""
    import export.single_file as single_file
    from service.cli.commands import prepare_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(single_file, "SD15_CONFIG_DIR", tiny_configs)
        return prepare_model(ldm_file, tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_conversion_restores_every_weight(ldm_file, tiny_configs, torch_pipeline):
    import torch

    from export.single_file import load_single_file_pipeline

    pipe = load_single_file_pipeline(ldm_file, tiny_configs)
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(torch_pipeline, name).state_dict()
        got = getattr(pipe, name).state_dict()
        assert got.keys() == expected.keys(), name
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{name}.{key}"
    assert pipe.tokenizer("a red circle").input_ids == torch_pipeline.tokenizer("a red circle").input_ids


@pytest.mark.slow
def test_served_single_file_draws_the_images_of_the_diffusers_export(served_bundle, demo_pipeline, ldm_file):
    assert served_bundle.parent.name.startswith("models") and served_bundle.name == "tiny-a1111"
    pipeline = Pipeline.from_path(served_bundle)
    for sampler in ("Euler a", "DPM++ 2M"):
        plan = make_plan(pipeline, steps=3, sampler=sampler, seeds=(11,))
        got, want = pipeline.txt2img(plan), demo_pipeline.txt2img(plan)
        np.testing.assert_allclose(got.latents[0], want.latents[0], atol=1e-5)
        assert np.array_equal(np.asarray(got.images[0]), np.asarray(want.images[0]))


def test_manifest_hash_is_a1111_file_hash(served_bundle, ldm_file):
    # A1111 (modules/hashes.py `calculate_sha256`): sha256 over the file's bytes, read in 1 MiB blocks.
    digest = hashlib.sha256()
    with open(ldm_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    manifest = load_bundle(served_bundle).manifest
    assert manifest.source_sha256 == digest.hexdigest()
    assert manifest.short_hash == digest.hexdigest()[:10]
    assert manifest.name == "tiny-a1111" and manifest.source_kind == "single_file"


def test_a_served_single_file_is_reused_not_exported_again(served_bundle, ldm_file, monkeypatch):
    import export.single_file as single_file
    from service.cli.commands import prepare_model

    monkeypatch.setattr(single_file, "export_single_file", lambda *a, **k: pytest.fail("exported again"))
    assert prepare_model(ldm_file, served_bundle.parent) == served_bundle


def test_a_bundle_from_before_textual_inversion_is_exported_again(served_bundle, ldm_file, monkeypatch):
    import dataclasses

    import export.single_file as single_file
    from engine import bundle as bundle_module
    from service.cli.commands import prepare_model

    real = bundle_module.load_bundle(served_bundle)
    assert real.manifest.text_token_tables  # this exporter ships the token table
    old = dataclasses.replace(real, manifest=dataclasses.replace(real.manifest, text_token_tables={}))
    monkeypatch.setattr(bundle_module, "load_bundle", lambda path: old)
    calls = []
    monkeypatch.setattr(single_file, "export_single_file", lambda path, out: calls.append(out) or out)
    assert prepare_model(ldm_file, served_bundle.parent) == served_bundle
    assert calls == [served_bundle]


def _sdxl_like(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight":
               torch.zeros(77, 8),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, path)
    return path


def _sd2_like(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"cond_stage_model.model.positional_embedding": torch.zeros(77, 8),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, path)
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a checkpoint" * 10)
    return path


def _vae_only(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, path)
    return path


@pytest.mark.parametrize("make,name,message", [
    # Truncated SDXL / SD 2.x files (no bigG ln_final, no OpenCLIP in_proj): the message lists what was found.
    (_sdxl_like, "xl.safetensors", "conditioner.embedders"),
    (_sd2_like, "v2.safetensors", "cond_stage_model.model"),
    (_garbage, "junk.safetensors", "cannot read"),
    (_garbage, "junk.ckpt", "cannot read"),
    (_vae_only, "vae.safetensors", "no UNet input convolution.*first_stage_model.encoder"),
])
def test_unsupported_files_get_a_clear_error(tmp_path, make, name, message):
    from export.__main__ import main
    from export.single_file import SingleFileError, load_single_file_pipeline
    from service.cli.commands import prepare_model

    path = make(tmp_path / name)
    with pytest.raises(SingleFileError, match=message):
        load_single_file_pipeline(path)
    with pytest.raises(SystemExit, match=message):
        prepare_model(path, tmp_path / "models")
    with pytest.raises(SystemExit, match=message):
        main(["convert", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("dropped,part", [
    ("model.diffusion_model.out.2.weight", "unet"),
    ("model.diffusion_model.input_blocks.4.1.proj_in.weight", "unet"),
    ("first_stage_model.decoder.conv_out.weight", "vae"),
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "CLIP"),
])
@pytest.mark.slow
def test_a_missing_tensor_is_an_error_not_a_random_layer(ldm_file, tiny_configs, tmp_path, dropped, part):
    from safetensors.torch import load_file, save_file

    from export.single_file import SingleFileError, load_single_file_pipeline

    state = load_file(ldm_file)
    del state[dropped]
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(SingleFileError, match=part):
        load_single_file_pipeline(tmp_path / "cut.safetensors", tiny_configs)


def test_weights_that_do_not_fit_the_configs_are_refused(ldm_file):
    from export.single_file import SingleFileError, load_single_file_pipeline

    # The tiny checkpoint against the real SD 1.5 configs: shapes differ everywhere.
    with pytest.raises(SingleFileError, match="do not fit|does not match"):
        load_single_file_pipeline(ldm_file)


# v1-inference.yaml (CompVis/stable-diffusion configs/stable-diffusion/v1-inference.yaml), the config A1111 uses
# for every SD 1.x checkpoint; diffusers' own conversion of it is the reference for the configs we ship.
V1_INFERENCE = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "image_size": 64, "channels": 4,
    "scale_factor": 0.18215,
    "unet_config": {"params": {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
        "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768, "use_checkpoint": True,
        "legacy": False}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
}}}


def assert_same_config(cls, ours: dict, reference: dict) -> None:
    """Both configs as the model's __init__ sees them (unset keys take its defaults)."""
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def norm(value):
        return list(value) if isinstance(value, tuple) else value

    for key, value in reference.items():
        assert norm(ours.get(key, defaults.get(key))) == norm(value), key


@pytest.mark.slow
def test_shipped_sd15_configs_load_and_match_v1_inference(tmp_path):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from transformers import CLIPTextConfig, CLIPTokenizer

    from export.single_file import write_config_folder

    folder = write_config_folder(tmp_path / "sd15")
    unet_cfg = UNet2DConditionModel.load_config(folder, subfolder="unet")
    assert tuple(unet_cfg["block_out_channels"]) == (320, 640, 1280, 1280)
    assert unet_cfg["cross_attention_dim"] == 768 and unet_cfg["in_channels"] == 4
    assert_same_config(UNet2DConditionModel, unet_cfg, create_unet_diffusers_config_from_ldm(V1_INFERENCE, {}))
    vae_cfg = AutoencoderKL.load_config(folder, subfolder="vae")
    assert_same_config(AutoencoderKL, vae_cfg, create_vae_diffusers_config_from_ldm(V1_INFERENCE, {}))
    text = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (768, 12, 3072)
    assert (text.hidden_act, text.max_position_embeddings) == ("quick_gelu", 77)
    scheduler = PNDMScheduler.from_pretrained(folder, subfolder="scheduler")
    # LDM's "linear" schedule: betas = linspace(sqrt(start), sqrt(end), T)²
    ldm_betas = torch.linspace(0.00085 ** 0.5, 0.0120 ** 0.5, 1000, dtype=torch.float64) ** 2
    np.testing.assert_allclose(scheduler.betas.numpy(), ldm_betas.numpy(), rtol=1e-6)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer("a photo").input_ids[0] == 49406 and len(tokenizer) == 49408
    # the 9-channel inpainting variant uses the same configs
    inpaint = write_config_folder(tmp_path / "inpaint", in_channels=9)
    assert UNet2DConditionModel.load_config(inpaint, subfolder="unet")["in_channels"] == 9


def test_old_clip_key_layout_is_read(ldm_file, tiny_configs, torch_pipeline, tmp_path):
    # Checkpoints saved with transformers < 4.11 lack `text_model.`; A1111 renames them on load.
    import torch
    from safetensors.torch import load_file, save_file

    from export.single_file import load_single_file_pipeline

    prefix = "cond_stage_model.transformer."
    state = {k.replace(prefix + "text_model.", prefix): v for k, v in load_file(ldm_file).items()}
    assert not any(k.startswith(prefix + "text_model.") for k in state)
    save_file(state, tmp_path / "old.safetensors")
    pipe = load_single_file_pipeline(tmp_path / "old.safetensors", tiny_configs)
    for key, value in torch_pipeline.text_encoder.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[key], value), key


@pytest.mark.slow
def test_inpainting_single_file_gets_a_9_channel_unet(demo_inpaint_diffusers_dir, tiny_configs, tmp_path):
    # The 4-channel configs serve: the UNet's input channels are read from the checkpoint.
    import torch
    from safetensors.torch import load_file

    from export.single_file import load_single_file_pipeline

    path = write_ldm_checkpoint(demo_inpaint_diffusers_dir, tmp_path / "inpaint.safetensors")
    pipe = load_single_file_pipeline(path, tiny_configs)
    assert pipe.unet.config.in_channels == 9
    expected = load_file(demo_inpaint_diffusers_dir / "unet" / "diffusion_pytorch_model.safetensors")
    for key, value in expected.items():
        assert torch.equal(pipe.unet.state_dict()[key], value), key

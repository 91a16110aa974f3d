"""Diffusers SD 1.x pipeline → sdedge bundle: portable fp32 ONNX (opset 17, standard ops) + manifest.

IO contract: the UNet takes a per-sample timestep [N] and has dynamic batch, height, width
and token axes; it is traced at an odd latent size so that every multiple-of-8 pixel size works. The text
encoder also returns `normed_hidden_states` [N, L, S, D] (every layer's output through the final layer norm)
for A1111's clip skip. The bundle is written to a temporary folder and renamed into place, so a half-written
bundle never looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from engine.bundle import MANIFEST_NAME, Manifest, NoiseScheduleConfig, hash_files, pooled_output_rule
from engine.special_tokens import SpecialTokenIds, read_special_token_ids
from export.detect import family_of_pipeline

OPSET = 17
EXPORTER = "sdedge-export 0.1.0"
# Odd latent sizes: diffusers then emits explicit upsample sizes instead of a fixed ×2, so any size runs.
TRACE_LATENT_HW = (7, 9)
TRACE_BATCH = 2


def _wrappers():
    import torch

    class TextEncoderWrapper(torch.nn.Module):
        def __init__(self, text_encoder):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):
            out = self.text_encoder(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            final_norm = self.text_encoder.text_model.final_layer_norm
            normed = torch.stack([final_norm(h) for h in out.hidden_states[1:]], dim=1)
            return out.last_hidden_state, out.pooler_output, normed

    class UNetWrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VaeEncoderWrapper(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample).latent_dist.parameters

    class VaeDecoderWrapper(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    return TextEncoderWrapper, UNetWrapper, VaeEncoderWrapper, VaeDecoderWrapper


def _export(module, args: tuple, path: Path, inputs: dict[str, dict], outputs: dict[str, dict],
            external_threshold: int | None = None) -> dict:
    import torch

    from export.attention_chunking import chunk_attention_file
    from export.onnx_layout import EXTERNAL_DATA_THRESHOLD, relayout

    if external_threshold is None:
        external_threshold = EXTERNAL_DATA_THRESHOLD

    path.parent.mkdir(parents=True, exist_ok=True)
    # torch writes a model over 2 GiB as one file per tensor: it traces into a scratch folder, from which the
    # component is re-saved in the bundle's layout (model.onnx + one model.onnx_data, export/onnx_layout.py).
    traced = Path(tempfile.mkdtemp(prefix=".trace-", dir=path.parent)) / path.name
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(traced),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={**inputs, **outputs},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        # Attention over query chunks above a score-memory budget (export/attention_chunking.py); recorded per
        # component. It rewrites the graph only, so it runs on torch's file whatever its layout.
        attention = chunk_attention_file(traced)
        files = relayout(traced, path, external_threshold)
    finally:
        shutil.rmtree(traced.parent, ignore_errors=True)
    return {"inputs": {k: v for k, v in inputs.items()}, "outputs": {k: v for k, v in outputs.items()},
            "attention": attention, **files.to_dict()}


def _axes(**named: int) -> dict:
    return {v: k for k, v in named.items()}


def vae_scale_factor(vae) -> int:
    """Pixels per latent along each side: ×2 per VAE block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def pipeline_manifest_fields(pipe, io: dict[str, dict], sha256: str | None, source_kind: str) -> dict:
    """The manifest fields that SD 1.x and SDXL exports (export/sdxl_export.py) fill alike: the latent space, the
    prediction type and the noise schedule, from the pipeline's UNet, VAE and scheduler, and what made the bundle
    (opset, exporter, source, each component's IO). The text encoders' fields are each exporter's own."""
    sched, vae = pipe.scheduler.config, pipe.vae
    return dict(
        prediction_type=sched.get("prediction_type", "epsilon"),
        latent_channels=vae.config.latent_channels,
        unet_in_channels=pipe.unet.config.in_channels,
        vae_scale_factor=vae_scale_factor(vae),
        vae_scaling_factor=float(vae.config.scaling_factor),
        noise_schedule=NoiseScheduleConfig(
            beta_start=sched.beta_start, beta_end=sched.beta_end, beta_schedule=sched.beta_schedule,
            num_train_timesteps=sched.num_train_timesteps,
        ),
        opset=OPSET,
        source_sha256=sha256,
        source_kind=source_kind,
        exporter=EXPORTER,
        io=io,
    )


def source_hash(source: Path) -> str:
    """sha256 of the source weights: the file itself for a single-file checkpoint (A1111's hash), else the
    weight files of a diffusers folder in sorted order."""
    if source.is_file():
        return hash_files([source])
    weights = sorted(p for p in source.rglob("*") if p.suffix in {".safetensors", ".bin", ".ckpt"})
    return hash_files(weights)


def export_pipeline(pipe, out: Path, name: str | None = None, sha256: str | None = None,
                    source_kind: str = "diffusers", external_data_threshold: int | None = None,
                    text_inputs_embeds: bool = True) -> Path:
    """Export a loaded diffusers `StableDiffusionPipeline` to an sdedge bundle at `out` (atomically).

    `external_data_threshold`: weight bytes from which a component's weights go to `model.onnx_data`
    (default export/onnx_layout.py's EXTERNAL_DATA_THRESHOLD: always). SDXL pipelines (a `text_encoder_2`:
    base, refiner, inpainting) go to export/sdxl_export.py. `text_inputs_embeds=False` writes the input_ids-only
    text encoder of bundles from before textual inversion (export/text_inputs_embeds.py)."""
    import torch

    from export.lora_map import lora_modules, write_lora_map
    from export.sdxl_export import export_sdxl_pipeline, is_sdxl_pipeline
    from export.text_inputs_embeds import export_text_encoder

    if is_sdxl_pipeline(pipe):
        return export_sdxl_pipeline(pipe, out, name=name, sha256=sha256, source_kind=source_kind,
                                    external_data_threshold=external_data_threshold,
                                    text_inputs_embeds=text_inputs_embeds)

    out = Path(out)
    TextEncoderWrapper, UNetWrapper, VaeEncoderWrapper, VaeDecoderWrapper = _wrappers()
    unet, vae, text_encoder = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval()
    # diffusers' SDPA processor traces to a plain MatMul→Softmax→MatMul chain (standard ops, fusable by TensorRT);
    # the legacy processor's baddbmm adds ConstantOfShape/Mul/Add per attention and ran ~25% slower on ORT CPU
    # (benchmarks/RESULTS.md), so the processors are left as they are.
    text_cfg = text_encoder.config
    # A1111 builds 77-token chunks (CLIP's position embeddings), whatever the tokenizer's model_max_length says
    # (a folder whose tokenizer_config lacks it would report transformers' 1e30).
    max_len = text_cfg.max_position_embeddings
    latent_ch = vae.config.latent_channels
    vae_factor = vae_scale_factor(vae)
    h, w = TRACE_LATENT_HW
    io: dict[str, dict] = {}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        special = _save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        ids = torch.full((TRACE_BATCH, max_len), special.eos_token_id, dtype=torch.int64)
        ids[:, 0] = special.bos_token_id
        io["text_encoder"], token_table = export_text_encoder(
            _export, TextEncoderWrapper(text_encoder), text_encoder, ids, tmp / "text_encoder" / "model.onnx",
            _axes(batch=0, sequence=1),
            {"last_hidden_state": _axes(batch=0, sequence=1), "pooler_output": _axes(batch=0),
             "normed_hidden_states": _axes(batch=0, sequence=2)},
            external_data_threshold, text_inputs_embeds,
        )
        sample = torch.randn(TRACE_BATCH, unet.config.in_channels, h, w)
        timestep = torch.tensor([999.0, 1.5])
        context = torch.randn(TRACE_BATCH, max_len, unet.config.cross_attention_dim)
        io["unet"] = _export(
            UNetWrapper(unet), (sample, timestep, context), tmp / "unet" / "model.onnx",
            {"sample": _axes(batch=0, height=2, width=3), "timestep": _axes(batch=0),
             "encoder_hidden_states": _axes(batch=0, sequence=1)},
            {"out_sample": _axes(batch=0, height=2, width=3)},
            external_data_threshold,
        )
        pixels = torch.randn(1, 3, h * vae_factor, w * vae_factor)
        io["vae_encoder"] = _export(
            VaeEncoderWrapper(vae), (pixels,), tmp / "vae_encoder" / "model.onnx",
            {"sample": _axes(batch=0, height=2, width=3)},
            {"latent_parameters": _axes(batch=0, latent_height=2, latent_width=3)},
            external_data_threshold,
        )
        latents = torch.randn(1, latent_ch, h, w)
        io["vae_decoder"] = _export(
            VaeDecoderWrapper(vae), (latents,), tmp / "vae_decoder" / "model.onnx",
            {"latent_sample": _axes(batch=0, latent_height=2, latent_width=3)},
            {"sample": _axes(batch=0, height=2, width=3)},
            external_data_threshold,
        )
        # Where each Linear/Conv2d weight landed, for merging LoRAs at run time without torch.
        write_lora_map(tmp, lora_modules(pipe))
        # optimum's folder layout, so the bundle also opens with optimum / diffusers tooling.
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        unet.save_config(tmp / "unet")
        vae.save_config(tmp / "vae_encoder")
        vae.save_config(tmp / "vae_decoder")
        text_encoder.config.save_pretrained(tmp / "text_encoder")
        (tmp / "model_index.json").write_text(json.dumps(_model_index(), indent=2))
        manifest = Manifest(
            name=name or out.name,
            architecture=family_of_pipeline(pipe),
            text_max_length=max_len,
            text_hidden_size=text_cfg.hidden_size,
            text_num_layers=text_cfg.num_hidden_layers,
            tokenizer=special,
            text_pooled_output=pooled_output_rule(text_cfg.eos_token_id),
            text_token_tables={"text_encoder": token_table} if token_table else {},
            **pipeline_manifest_fields(pipe, io, sha256, source_kind),
        )
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_tokenizer(tokenizer, folder: Path) -> SpecialTokenIds:
    """Write the tokenizer files and read the prompt's special ids back from them, as the engine will.

    Never from the text encoder config: official SD 1.x folders say bos 0 / eos 2 / pad 1 there (transformers'
    legacy values), while the tokenizer (and A1111, and diffusers) use 49406 / 49407 / 49407.
    """
    tokenizer.save_pretrained(folder)
    special = read_special_token_ids(folder)
    expected = SpecialTokenIds(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if special != expected:
        raise ValueError(f"special tokens read back from the saved tokenizer {special} differ from the "
                         f"tokenizer's own {expected}")
    return special


def _model_index() -> dict:
    return {
        "_class_name": "ORTStableDiffusionPipeline",
        "_diffusers_version": "0.39.0",
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["optimum", "ORTModelForCustomTasks"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["optimum", "ORTModelForCustomTasks"],
        "vae_decoder": ["optimum", "ORTModelForCustomTasks"],
        "vae_encoder": ["optimum", "ORTModelForCustomTasks"],
    }


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing bundle is swapped out first, then removed."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_diffusers_folder(source: Path, out: Path, name: str | None = None) -> Path:
    """Load a diffusers-format folder (SD 1.x, or SDXL by its model_index.json) on CPU in fp32 and export it."""
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    index = json.loads((Path(source) / "model_index.json").read_text())
    if "XL" in index.get("_class_name", ""):
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch.float32)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
        )
    return export_pipeline(pipe, out, name=name or Path(source).name, sha256=source_hash(Path(source)))

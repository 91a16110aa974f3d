"""Diffusers SDXL pipeline (base, refiner, inpainting) → sdedge bundle, through export/onnx_export.py's helpers.

IO contract (the same names `optimum-cli export onnx` gives SDXL, so both kinds of folder run one code path):
- `text_encoder` (CLIP-L; the refiner has none): `input_ids` → `last_hidden_state`, `pooler_output`,
  `hidden_states.0` … `hidden_states.L` (the raw layer outputs: A1111 picks hidden_states[11], or
  hidden_states[-clip_skip] with option sdxl_clip_l_skip; no final LayerNorm on either).
- `text_encoder_2` (OpenCLIP bigG with projection): `input_ids` → `text_embeds` (the projected pooled output),
  `last_hidden_state`, `hidden_states.0` … `hidden_states.L` (A1111's "penultimate" is hidden_states[-2]).
- `unet`: `sample`, `timestep` [N], `encoder_hidden_states` [N, S, 2048 (refiner 1280)], `text_embeds` [N, 1280],
  `time_ids` [N, 6 (refiner 5)] → `out_sample`.
- `vae_encoder` / `vae_decoder` as for SD 1.x.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from engine.bundle import MANIFEST_NAME, Manifest, pooled_output_rule
from export.onnx_export import (
    TRACE_BATCH,
    TRACE_LATENT_HW,
    _axes,
    _export,
    _replace_dir,
    _save_tokenizer,
    _wrappers,
    pipeline_manifest_fields,
    vae_scale_factor,
)

SDXL_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)
REFINER_TIME_IDS = 5  # original (h, w), crop (top, left), aesthetic score


def is_sdxl_pipeline(pipe) -> bool:
    """SDXL pipelines (base, img2img/refiner, inpainting) carry the bigG encoder as `text_encoder_2`."""
    return getattr(pipe, "text_encoder_2", None) is not None


def _sdxl_wrappers():
    import torch

    class HiddenStatesEncoder(torch.nn.Module):
        """A CLIP text model returning its named outputs and every layer's raw hidden state."""

        def __init__(self, encoder, first: str, second: str):
            super().__init__()
            self.encoder = encoder
            self.first, self.second = first, second

        def forward(self, input_ids):
            out = self.encoder(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            return (out[self.first], out[self.second], *out.hidden_states)

    class SdxlUNet(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]

    return HiddenStatesEncoder, SdxlUNet


def export_sdxl_pipeline(pipe, out: Path, name: str | None = None, sha256: str | None = None,
                         source_kind: str = "diffusers", external_data_threshold: int | None = None,
                         text_inputs_embeds: bool = True) -> Path:
    """Export a loaded diffusers SDXL pipeline (any class with `text_encoder_2`) to a bundle at `out`; both
    encoders take `inputs_embeds` unless `text_inputs_embeds=False` (export/text_inputs_embeds.py)."""
    import torch

    from export.text_inputs_embeds import export_text_encoder

    out = Path(out)
    HiddenStatesEncoder, SdxlUNet = _sdxl_wrappers()
    _, _, VaeEncoderWrapper, VaeDecoderWrapper = _wrappers()
    unet, vae, text_encoder_2 = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder_2.eval()
    text_encoder = pipe.text_encoder.eval() if getattr(pipe, "text_encoder", None) is not None else None
    cfg2 = text_encoder_2.config
    max_len = cfg2.max_position_embeddings
    n_time_ids = (unet.config.projection_class_embeddings_input_dim - cfg2.projection_dim) \
        // unet.config.addition_time_embed_dim
    if n_time_ids not in (SDXL_TIME_IDS, REFINER_TIME_IDS):
        raise ValueError(f"the UNet's added embedding takes {n_time_ids} time ids; SDXL has 6, its refiner 5")
    architecture = "sdxl" if n_time_ids == SDXL_TIME_IDS else "sdxl-refiner"
    latent_ch = vae.config.latent_channels
    vae_factor = vae_scale_factor(vae)
    h, w = TRACE_LATENT_HW
    io: dict[str, dict] = {}
    token_tables: dict[str, str] = {}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        special_2 = _save_tokenizer(pipe.tokenizer_2, tmp / "tokenizer_2")
        special = special_2
        if text_encoder is not None:
            special = _save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        ids = torch.full((TRACE_BATCH, max_len), special.eos_token_id, dtype=torch.int64)
        ids[:, 0] = special.bos_token_id
        encoders = [("text_encoder_2", text_encoder_2, "text_embeds", "last_hidden_state")]
        if text_encoder is not None:
            encoders.insert(0, ("text_encoder", text_encoder, "last_hidden_state", "pooler_output"))
        for component, encoder, first, second in encoders:
            per_token = {first, second} & {"last_hidden_state"}
            outputs = {n: _axes(batch=0, sequence=1) if n in per_token else _axes(batch=0) for n in (first, second)}
            outputs |= {f"hidden_states.{i}": _axes(batch=0, sequence=1)
                        for i in range(encoder.config.num_hidden_layers + 1)}
            io[component], table = export_text_encoder(
                _export, HiddenStatesEncoder(encoder, first, second), encoder, ids, tmp / component / "model.onnx",
                _axes(batch=0, sequence=1), outputs, external_data_threshold, text_inputs_embeds,
            )
            if table:
                token_tables[component] = table
        context_dim = unet.config.cross_attention_dim
        args = (
            torch.randn(TRACE_BATCH, unet.config.in_channels, h, w),
            torch.tensor([999.0, 1.5]),
            torch.randn(TRACE_BATCH, max_len, context_dim),
            torch.randn(TRACE_BATCH, cfg2.projection_dim),
            torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0][:n_time_ids]] * TRACE_BATCH),
        )
        io["unet"] = _export(
            SdxlUNet(unet), args, tmp / "unet" / "model.onnx",
            {"sample": _axes(batch=0, height=2, width=3), "timestep": _axes(batch=0),
             "encoder_hidden_states": _axes(batch=0, sequence=1), "text_embeds": _axes(batch=0),
             "time_ids": _axes(batch=0)},
            {"out_sample": _axes(batch=0, height=2, width=3)},
            external_data_threshold,
        )
        io["vae_encoder"] = _export(
            VaeEncoderWrapper(vae), (torch.randn(1, 3, h * vae_factor, w * vae_factor),),
            tmp / "vae_encoder" / "model.onnx",
            {"sample": _axes(batch=0, height=2, width=3)},
            {"latent_parameters": _axes(batch=0, latent_height=2, latent_width=3)},
            external_data_threshold,
        )
        io["vae_decoder"] = _export(
            VaeDecoderWrapper(vae), (torch.randn(1, latent_ch, h, w),), tmp / "vae_decoder" / "model.onnx",
            {"latent_sample": _axes(batch=0, latent_height=2, latent_width=3)},
            {"sample": _axes(batch=0, height=2, width=3)},
            external_data_threshold,
        )
        # Where each Linear/Conv2d weight landed, for merging LoRAs at run time (export/lora_map.py).
        from export.lora_map import lora_modules, write_lora_map

        write_lora_map(tmp, lora_modules(pipe))
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        unet.save_config(tmp / "unet")
        vae.save_config(tmp / "vae_encoder")
        vae.save_config(tmp / "vae_decoder")
        text_encoder_2.config.save_pretrained(tmp / "text_encoder_2")
        if text_encoder is not None:
            text_encoder.config.save_pretrained(tmp / "text_encoder")
        (tmp / "model_index.json").write_text(json.dumps(_model_index(text_encoder is not None), indent=2))
        cfg1 = text_encoder.config if text_encoder is not None else None
        manifest = Manifest(
            name=name or out.name,
            architecture=architecture,
            text_max_length=max_len,
            text_hidden_size=cfg1.hidden_size if cfg1 is not None else 0,
            text_num_layers=cfg1.num_hidden_layers if cfg1 is not None else 0,
            tokenizer=special,
            tokenizer_2=special_2,
            text_2_hidden_size=cfg2.hidden_size,
            text_2_num_layers=cfg2.num_hidden_layers,
            text_pooled_size=cfg2.projection_dim,
            text_pooled_output=pooled_output_rule(cfg2.eos_token_id),
            text_token_tables=token_tables,
            **pipeline_manifest_fields(pipe, io, sha256, source_kind),
        )
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model_index(has_text_encoder: bool) -> dict:
    ort = ["optimum", "ORTModelForCustomTasks"]
    index = {
        "_class_name": "ORTStableDiffusionXLPipeline",
        "_diffusers_version": "0.39.0",
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder_2": ort,
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ort,
        "vae_decoder": ort,
        "vae_encoder": ort,
    }
    if has_text_encoder:
        index |= {"text_encoder": ort, "tokenizer": ["transformers", "CLIPTokenizer"]}
    return index

"""VAE files written in the tests: a random AutoencoderKL saved in A1111's LDM key layout.

The diffusers → LDM renaming here is written independently of the code under test (from the LDM module names in
CompVis' `ldm/modules/diffusionmodules/model.py`: `down.i.block.j`, `nin_shortcut`, `mid.block_1`, `mid.attn_1`
with 1×1-conv q/k/v/proj_out, `norm_out`), so a wrong conversion in export/vae_export.py cannot cancel out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESNET = {"conv_shortcut": "nin_shortcut"}
ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def random_vae(config: dict, seed: int):
    """An AutoencoderKL of `config` with weights drawn from `seed` (norms and biases too, so nothing is trivial)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
    return vae


def ldm_state_dict(vae) -> dict:
    """diffusers AutoencoderKL state dict → LDM (A1111 `models/VAE` file) keys and shapes."""
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        new = new.replace("conv_norm_out", "norm_out")
        m = re.match(r"(encoder)\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", new)
        if m:
            side, i, kind, j, rest = m.groups()
            new = (f"{side}.down.{i}.block.{j}.{RESNET.get(rest.split('.')[0], rest.split('.')[0])}."
                   f"{rest.split('.', 1)[1]}" if kind == "resnets" else f"{side}.down.{i}.downsample.{rest}")
        m = re.match(r"(decoder)\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", new)
        if m:
            side, i, kind, j, rest = m.groups()
            block = n_up - 1 - int(i)
            new = (f"{side}.up.{block}.block.{j}.{RESNET.get(rest.split('.')[0], rest.split('.')[0])}."
                   f"{rest.split('.', 1)[1]}" if kind == "resnets" else f"{side}.up.{block}.upsample.{rest}")
        m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", new)
        if m:
            side, k, rest = m.groups()
            new = f"{side}.mid.block_{int(k) + 1}.{rest}"
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", new)
        if m:
            side, part, kind = m.groups()
            new = f"{side}.mid.attn_1.{ATTENTION[part]}.{kind}"
            if kind == "weight" and value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention is 1×1 convolutions
        out[new] = value.clone().contiguous()
    return out


def write_ldm_vae(vae, path: Path, junk: bool = True) -> Path:
    """Save `vae` as an LDM-format file (.safetensors or .pt/.ckpt), with the training leftovers real files carry
    (`loss.*`, `model_ema.*`), which A1111 drops on load."""
    import torch
    from safetensors.torch import save_file

    state = ldm_state_dict(vae)
    if junk:
        state["loss.logvar"] = torch.zeros(())
        state["model_ema.num_updates"] = torch.tensor(7)
        state["model_ema.decoderconv_inweight"] = torch.zeros(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


def bundle_vae_config(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "vae_decoder" / "config.json").read_text())

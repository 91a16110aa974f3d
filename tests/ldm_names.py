"""The reference renaming of diffusers UNet module names to LDM (SGM) block names, written out from the spec
(/work/shared/spec/extra-networks.md: A1111's kohya → LDM table for SD 1.x/2.x, whose `3` is layers_per_block + 1;
SDXL's sgm/modules/diffusionmodules/openaimodel.py numbers its blocks the same way). The LoRA tests check the
engine's key matching against it, so it stays independent of engine/lora.py."""

from __future__ import annotations

import re

RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
          "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def diffusers_to_ldm(name: str, layers_per_block: int) -> str | None:
    """A diffusers UNet module name with `_` for `.` (`down_blocks_1_attentions_0_proj_in`) → its LDM name
    (input_blocks 1 + (lpb+1)·b + j, output_blocks (lpb+1)·b + j, inner index 0 resnet / 1 attention;
    middle_block 0 resnet, 1 attention, 2 resnet; a down block's downsampler input_blocks (lpb+1)·(b+1) 0 op),
    or None for a name outside those blocks."""
    per = layers_per_block + 1
    if m := re.match(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.*)", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = RESNET.get(rest, rest) if kind == "resnets" else rest
        return f"input_blocks_{1 + per * b + j}_{1 if kind == 'attentions' else 0}_{rest}"
    if m := re.match(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.*)", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = RESNET.get(rest, rest) if kind == "resnets" else rest
        return f"output_blocks_{per * b + j}_{1 if kind == 'attentions' else 0}_{rest}"
    if m := re.match(r"mid_block_attentions_0_(.*)", name):
        return f"middle_block_1_{m[1]}"
    if m := re.match(r"mid_block_resnets_(\d)_(.*)", name):
        return f"middle_block_{2 * int(m[1])}_{RESNET.get(m[2], m[2])}"
    if m := re.match(r"down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"input_blocks_{per * (int(m[1]) + 1)}_0_op"
    return None

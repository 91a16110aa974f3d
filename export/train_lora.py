"""Train a small LoRA on the shapes model: every shape comes out purple, whatever colour the prompt names.

    python -m export.train_lora --out export/weights/loras/purple.safetensors

The base model stays frozen; rank-r factors beside every attention projection and feed-forward layer of the UNet's transformer blocks learn ε on scenes drawn
purple under their usual captions ("a red circle" → a purple circle). The file is written in kohya's format (the
one A1111 users download), so it goes through the same loader as theirs. One torch thread, seeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("train_lora")

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


@dataclass(frozen=True)
class LoraTrainConfig:
    colour: str = "purple"
    rank: int = 8
    alpha: float = 8.0
    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    pool: int = 2048
    minutes: float = 14.0
    seed: int = 0


def _lora_layers(unet, rank: int):
    """(kohya key, Linear, down, up) for every attention projection and feed-forward Linear of the transformer
    blocks (kohya's default targets); up starts at zero (the base model)."""
    import torch

    layers = []
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in TARGETS):
            down = torch.nn.Parameter(torch.randn(rank, module.in_features) / math.sqrt(module.in_features))
            up = torch.nn.Parameter(torch.zeros(module.out_features, rank))
            layers.append(("lora_unet_" + name.replace(".", "_"), module, down, up))
    return layers


def train(cfg: LoraTrainConfig, out: Path) -> dict:
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from engine.safetensors_file import write_file
    from export.shapes import NATIVE_SIZE, build_shapes_pipeline, load_config
    from export.synthetic_shapes import render, sample_scene

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    pipe = build_shapes_pipeline()
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval()
    rng = random.Random(cfg.seed)
    scaling = vae.config.scaling_factor
    latents, contexts = [], []
    with torch.no_grad():
        for _ in range(math.ceil(cfg.pool / 256)):
            scenes = [sample_scene(rng) for _ in range(256)]
            pixels = np.stack([np.asarray(render(dataclasses.replace(s, colour=cfg.colour), NATIVE_SIZE, rng),
                                          dtype=np.float32) for s in scenes]).transpose(0, 3, 1, 2) / 127.5 - 1
            latents.append(vae.encode(torch.from_numpy(pixels)).latent_dist.mean * scaling)
            ids = tokenizer([s.caption for s in scenes], padding="max_length",
                            max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
            contexts.append(text_encoder(ids)[0])
    latents, contexts = torch.cat(latents), torch.cat(contexts)

    layers = _lora_layers(unet, cfg.rank)
    scale = cfg.alpha / cfg.rank
    for _, module, down, up in layers:
        def forward(x, module=module, down=down, up=up, base=module.forward):
            return base(x) + (x @ down.T @ up.T) * scale
        module.forward = forward
    params = [p for _, _, down, up in layers for p in (down, up)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = load_config("scheduler")
    noise_sched = DDPMScheduler(num_train_timesteps=sched["num_train_timesteps"], beta_start=sched["beta_start"],
                                beta_end=sched["beta_end"], beta_schedule=sched["beta_schedule"])
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start, losses, step = time.monotonic(), [], 0
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=gen)
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        pred = unet(noise_sched.add_noise(latents[idx], noise, t), t, contexts[idx]).sample
        loss = ((pred - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d loss %.5f (%.1f min)", step, sum(losses[-50:]) / 50, (time.monotonic() - start) / 60)
        if (time.monotonic() - start) / 60 > cfg.minutes:
            log.info("time budget reached at step %d", step)
            break
    tensors = {}
    for key, _, down, up in layers:
        tensors[f"{key}.lora_down.weight"] = down.detach().numpy().astype(np.float16)
        tensors[f"{key}.lora_up.weight"] = up.detach().numpy().astype(np.float16)
        tensors[f"{key}.alpha"] = np.asarray(cfg.alpha, dtype=np.float16)
    record = {"steps_done": step, "recent_loss": sum(losses[-100:]) / len(losses[-100:]),
              "minutes": round((time.monotonic() - start) / 60, 2), **dataclasses.asdict(cfg)}
    metadata = {"ss_output_name": out.stem, "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.alpha),
                "ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora",
                "sdedge_training": json.dumps(record)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, tensors, metadata)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("export/weights/loras/purple.safetensors"))
    parser.add_argument("--steps", type=int, default=LoraTrainConfig.steps)
    parser.add_argument("--minutes", type=float, default=LoraTrainConfig.minutes)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record = train(LoraTrainConfig(steps=args.steps, minutes=args.minutes), args.out)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

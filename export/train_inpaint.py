"""Fine-tune the trained shapes UNet into a 9-channel inpainting UNet, as SD-inpainting was made from SD 1.x.

    python -m export.train_inpaint --out STAGE1                    # widen + fine-tune
    python -m export.train_inpaint --init-from STAGE1 --out ...    # optional further runs (see training.json)

`conv_in` is widened to [noisy latent (4), mask (1), masked-image latent (4)] — diffusers' and A1111's channel
order — with the new input weights at zero, so training starts from exactly the text-to-image model. The VAE
and text encoder of export/weights/shapes-sd are reused frozen; only the UNet is stored. One torch thread, seeded,
and the EMA UNet + training.json are written at every checkpoint (see export/train_tiny.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from export.shapes import (
    INPAINT_CONFIG_DIR,
    INPAINT_WEIGHTS_DIR,
    NATIVE_SIZE,
    WEIGHTS_DIR,
    build_shapes_pipeline,
    load_config,
    training_record,
)
from export.synthetic_shapes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, render, sample_scene
from export.train_tiny import _progress, _save, unet_step

log = logging.getLogger("train_inpaint")

HALVES = ("left", "right", "top", "bottom")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclass(frozen=True)
class InpaintConfig:
    seed: int = 0
    threads: int = 1
    size: int = NATIVE_SIZE
    pool: int = 8_000
    full_mask: float = 0.2  # A1111's txt2img with an inpainting model: everything masked, mid-grey image
    half_mask: float = 0.5  # one half of the image; what is left of the probability: random boxes
    # With a half mask, another (uncaptioned) shape in the kept half. Often: A1111 blends the init latent into
    # the kept part at every step, so the model sees that shape in x too and otherwise learns to copy its colour.
    distractor: float = 0.7
    caption_dropout: float = 0.1
    steps: int = 3000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 100
    minutes: float = 22.0
    ema_decay: float = 0.998
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250
    kept_weight: float = 1.0  # loss weight of the latent cells outside the mask (1: uniform, as SD-inpainting)
    init_from: str = ""  # a folder with a 9-channel unet.safetensors to continue from, instead of widening


def sample_mask(rng: random.Random, scene: Scene, cfg: InpaintConfig) -> tuple[np.ndarray, str | None]:
    """A mask on the latent grid (1 = repaint), so pixel and latent masks agree exactly; and, for a half mask,
    the half that is kept (where a distractor may go)."""
    cells = cfg.size // 8
    mask = np.zeros((cells, cells), dtype=np.float32)
    kind = rng.random()
    if kind < cfg.full_mask:
        mask[:] = 1.0
        return mask, None
    if kind < cfg.full_mask + cfg.half_mask:
        side = scene.position if scene.position in HALVES else rng.choice(HALVES)
        half = cells // 2
        region = {"left": np.s_[:, :half], "right": np.s_[:, half:], "top": np.s_[:half, :],
                  "bottom": np.s_[half:, :]}[side]
        mask[region] = 1.0
        return mask, OPPOSITE[side]
    h, w = rng.randint(2, cells), rng.randint(2, cells)
    y, x = rng.randint(0, cells - h), rng.randint(0, cells - w)
    mask[y : y + h, x : x + w] = 1.0
    return mask, None


def sample_example(rng: random.Random, cfg: InpaintConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(target scene, masked scene, latent-grid mask, caption); images [3, H, W] in [−1, 1].

    The masked part of the scene is set to 0 (mid-grey), as A1111 builds the conditioning image (A1111
    modules/processing.py: StableDiffusionProcessing.img2img_image_conditioning). With a
    half mask the kept half shows the bare background or another shape, uncaptioned: the caption describes what
    goes in the hole.
    """
    scene = sample_scene(rng, cfg.caption_dropout)
    mask, kept = sample_mask(rng, scene, cfg)
    target = np.asarray(render(scene, cfg.size, rng), dtype=np.float32) / 127.5 - 1.0
    pixel_mask = np.kron(mask, np.ones((8, 8), dtype=np.float32))[..., None]
    if kept is not None:
        # The kept half never shows the captioned shape: the prompt alone says what goes in the hole.
        if rng.random() < cfg.distractor:
            colours = [c for c in COLOURS if c not in (scene.colour, scene.background)]
            other = Scene(rng.choice(SHAPES), rng.choice(colours), scene.background, kept, rng.choice(list(SIZES)),
                          "")
            backdrop = np.asarray(render(other, cfg.size, rng), dtype=np.float32) / 127.5 - 1.0
        else:
            backdrop = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32) / 127.5 - 1.0
        target = pixel_mask * target + (1.0 - pixel_mask) * backdrop
    masked = target * (1.0 - pixel_mask)
    return target.transpose(2, 0, 1), masked.transpose(2, 0, 1), mask, scene.caption


def encode_pool(pipe, cfg: InpaintConfig, rng: random.Random, scaling: float):
    """Scaled posterior means of the targets and masked images, the masks, and the caption embeddings."""
    import torch

    targets, conds, contexts = [], [], []
    with torch.no_grad():
        for _ in range(math.ceil(cfg.pool / 256)):
            examples = [sample_example(rng, cfg) for _ in range(256)]
            target, masked, mask, captions = (list(x) for x in zip(*examples, strict=True))
            encode = pipe.vae.encode
            targets.append(encode(torch.from_numpy(np.stack(target))).latent_dist.mean * scaling)
            masked_latent = encode(torch.from_numpy(np.stack(masked))).latent_dist.mean * scaling
            conds.append(torch.cat([torch.from_numpy(np.stack(mask))[:, None], masked_latent], dim=1))
            ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            contexts.append(pipe.text_encoder(ids)[0].to(torch.float16))
    return torch.cat(targets), torch.cat(conds), torch.cat(contexts)


def widen_unet(unet):
    """The same UNet with a 9-channel conv_in whose extra input weights are zero (SD-inpainting's init)."""
    import torch
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel(**load_config("unet", INPAINT_CONFIG_DIR))
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    widened = torch.zeros((weight.shape[0], wide.config.in_channels, *weight.shape[2:]), dtype=weight.dtype)
    widened[:, : weight.shape[1]] = weight
    state["conv_in.weight"] = widened
    wide.load_state_dict(state)
    return wide


def train(cfg: InpaintConfig, out: Path) -> dict:
    import torch
    from diffusers import DDPMScheduler

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    began = time.monotonic()
    pipe = build_shapes_pipeline(WEIGHTS_DIR)
    scaling = float(training_record(WEIGHTS_DIR)["vae_scaling_factor"])
    unet = widen_unet(pipe.unet)
    if cfg.init_from:
        from safetensors.torch import load_file

        unet.load_state_dict({k: v.float() for k, v in load_file(Path(cfg.init_from) / "unet.safetensors").items()})
    pool = encode_pool(pipe, cfg, random.Random(cfg.seed), scaling)
    log.info("pool encoded: %d examples in %.1f min", len(pool[0]), (time.monotonic() - began) / 60)

    sched_cfg = load_config("scheduler")
    noise_sched = DDPMScheduler(
        num_train_timesteps=sched_cfg["num_train_timesteps"], beta_start=sched_cfg["beta_start"],
        beta_end=sched_cfg["beta_end"], beta_schedule=sched_cfg["beta_schedule"],
    )
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    targets, conds, contexts = pool
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    record: dict = {"config": asdict(cfg), "torch": torch.__version__, "base": "export/weights/shapes-sd",
                    "pool_minutes": (time.monotonic() - began) / 60, "loss_curve": {}}
    if cfg.init_from:
        record["previous_stage"] = json.loads((Path(cfg.init_from) / "training.json").read_text())
    unet.train()
    start = time.monotonic()
    bar = _progress(cfg.steps, "inpaint unet")
    losses: list[float] = []

    def save(step: int) -> None:
        record.update(steps_done=step, recent_loss=sum(losses[-200:]) / len(losses[-200:]),
                      unet_minutes=(time.monotonic() - start) / 60, total_minutes=(time.monotonic() - began) / 60)
        # Time budgets make the step count machine-dependent; these arguments replay exactly this run.
        replay = asdict(replace(cfg, steps=step, minutes=1e9))
        record["reproduce"] = "python -m export.train_inpaint " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in replay.items())
        _save({"unet": ema}, out, record)

    step = 0
    for step in range(1, cfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / cfg.warmup)
        idx = torch.randint(0, len(targets), (cfg.batch,), generator=gen)
        noise = torch.randn(targets[idx].shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        noisy = noise_sched.add_noise(targets[idx], noise, t)
        pred = unet(torch.cat([noisy, conds[idx]], dim=1), t, contexts[idx].float()).sample
        weight = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]  # min-SNR-γ for ε-prediction
        # Outside the mask ε is nearly readable from the masked-image latent; the hole is what must be learnt.
        cells = conds[idx][:, :1] + cfg.kept_weight * (1 - conds[idx][:, :1])
        loss = (weight * (cells * (pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        unet_step(loss, opt, unet, ema, step, cfg.ema_decay)
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            recent = sum(losses[-50:]) / 50
            bar.set_postfix(loss=f"{recent:.4f}")
            log.info("step %d loss %.5f (%.1f min)", step, recent, (time.monotonic() - start) / 60)
        if step % 100 == 0:
            record["loss_curve"][str(step)] = round(sum(losses[-100:]) / 100, 5)
        over_budget = (time.monotonic() - start) / 60 > cfg.minutes
        if step % cfg.checkpoint_every == 0 or over_budget:
            save(step)
        if over_budget:
            log.info("time budget reached at step %d", step)
            break
    bar.close()
    save(step)
    log.info("done: %s", json.dumps({k: v for k, v in record.items() if k not in ("config", "loss_curve")}))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.train_inpaint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=INPAINT_WEIGHTS_DIR)
    for name, value in asdict(InpaintConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(InpaintConfig(**args), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

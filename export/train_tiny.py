"""Train the shapes model on CPU: VAE, then the UNet on its latents, then more decoder training with the encoder
frozen; the text encoder stays at its seeded random init. One torch thread: on a busy shared machine two
threads were several times slower per step (they wait on each other at every op).

    python -m export.train_tiny --out export/weights/shapes-sd

Seeded and reproducible for the same step counts and thread count. Weights are written (fp16 safetensors +
training.json) at every checkpoint, so a run stopped by its time budget still leaves a usable model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from export.shapes import CONFIG_DIR, NATIVE_SIZE, WEIGHTS_DIR, new_components

log = logging.getLogger("train_tiny")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    threads: int = 1
    size: int = NATIVE_SIZE
    vae_steps: int = 3000
    vae_batch: int = 8
    vae_size: int = 32
    vae_full_size_every: int = 4
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-5
    vae_minutes: float = 8.0
    vae_warmup: int = 10
    latent_pool: int = 8_000
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    unet_minutes: float = 30.0
    decoder_steps: int = 3000
    decoder_lr: float = 5e-4
    decoder_minutes: float = 25.0
    warmup: int = 100
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250


def _save(modules: dict, out: Path, record: dict) -> None:
    """fp16 safetensors + training.json, each written to a temporary name and renamed into place."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
        tmp = out / f".{name}.safetensors.tmp"
        save_file(state, tmp)
        os.replace(tmp, out / f"{name}.safetensors")
    tmp = out / ".training.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / "training.json")


def _round_to_fp16(module) -> None:
    """Train against exactly the weights that will be stored (the frozen text encoder is stored in fp16)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.float16).float())


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, mininterval=5.0, dynamic_ncols=True)


def optimizer_step(loss, opt, params) -> None:
    """Backpropagate `loss` and take one optimiser step with the gradients of `params` clipped to norm 1."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def unet_step(loss, opt, unet, ema, step: int, ema_decay: float) -> None:
    """One optimiser step, then the EMA copy moves towards the weights (decay warmed up as
    (1 + step) / (10 + step) so early steps are not frozen in)."""
    import torch

    optimizer_step(loss, opt, unet.parameters())
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


def train_vae(vae, cfg: TrainConfig, rng: random.Random, out_record: dict) -> float:
    """Reconstruction (MSE) of the posterior mode + a small KL term; returns the scaling factor 1/std(latents).

    Decoding the mode rather than a sample: with a few hundred steps the posterior noise (std ≈ 1 at init)
    would drown the signal; the engine encodes with the mode too.
    """
    import torch

    from export.synthetic_shapes import sample_batch

    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    start = time.monotonic()
    bar = _progress(cfg.vae_steps, "vae")
    step = 0
    for step in range(1, cfg.vae_steps + 1):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * min(1.0, step / cfg.vae_warmup)
        # Mostly half-size scenes (4× cheaper); every few steps the native size, so both scales are seen.
        size = cfg.size if step % cfg.vae_full_size_every == 0 else cfg.vae_size
        pixels, _ = sample_batch(rng, cfg.vae_batch, size, caption_dropout=0.0)
        x = torch.from_numpy(pixels)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + cfg.vae_kl_weight * posterior.kl().mean()
        optimizer_step(loss, opt, vae.parameters())
        bar.update(1)
        bar.set_postfix(mse=f"{mse.item():.4f}")
        if step % 50 == 0:
            log.info("vae step %d mse %.5f", step, mse.item())
        if (time.monotonic() - start) / 60 > cfg.vae_minutes:
            log.info("vae time budget reached at step %d", step)
            break
    bar.close()
    vae.eval()
    out_record.update(vae_steps_done=step, vae_final_mse=float(mse.item()),
                      vae_minutes=(time.monotonic() - start) / 60)
    with torch.no_grad():
        pixels, _ = sample_batch(random.Random(cfg.seed + 99), 256, cfg.size, caption_dropout=0.0)
        latents = vae.encode(torch.from_numpy(pixels)).latent_dist.mode()
    return float(1.0 / latents.std())


def encode_pool(vae, text_encoder, tokenizer, cfg: TrainConfig, rng: random.Random, scaling: float):
    """Posterior modes of a fixed pool of scenes (scaled), and their caption embeddings (frozen text encoder)."""
    import torch

    from export.synthetic_shapes import sample_batch

    means, contexts = [], []
    with torch.no_grad():
        for _ in range(math.ceil(cfg.latent_pool / 256)):
            pixels, captions = sample_batch(rng, 256, cfg.size)
            dist = vae.encode(torch.from_numpy(pixels)).latent_dist
            means.append(dist.mean * scaling)
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            contexts.append(text_encoder(ids)[0].to(torch.float16))
    return torch.cat(means), torch.cat(contexts)


def train_unet(unet, pool, cfg: TrainConfig, save) -> dict:
    """ε-prediction with SD's scaled-linear schedule, min-SNR-γ weighting and an EMA of the weights."""
    import copy

    import torch
    from diffusers import DDPMScheduler

    from export.shapes import load_config

    sched_cfg = load_config("scheduler")
    noise_sched = DDPMScheduler(
        num_train_timesteps=sched_cfg["num_train_timesteps"], beta_start=sched_cfg["beta_start"],
        beta_end=sched_cfg["beta_end"], beta_schedule=sched_cfg["beta_schedule"],
    )
    alphas_cumprod = noise_sched.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    means, contexts = pool
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    unet.train()
    start = time.monotonic()
    bar = _progress(cfg.unet_steps, "unet")
    losses: list[float] = []
    step = 0
    for step in range(1, cfg.unet_steps + 1):
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * min(1.0, step / cfg.warmup)
        idx = torch.randint(0, len(means), (cfg.unet_batch,), generator=gen)
        latents = means[idx]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        noisy = noise_sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, contexts[idx].float()).sample
        weight = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]  # min-SNR-γ for ε-prediction
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        unet_step(loss, opt, unet, ema, step, cfg.ema_decay)
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            recent = sum(losses[-50:]) / len(losses[-50:])
            bar.set_postfix(loss=f"{recent:.4f}")
            log.info("unet step %d loss %.5f (%.1f min)", step, recent, (time.monotonic() - start) / 60)
        over_budget = (time.monotonic() - start) / 60 > cfg.unet_minutes
        if step % cfg.checkpoint_every == 0 or over_budget:
            save(ema, {"unet_steps_done": step, "unet_recent_loss": sum(losses[-200:]) / len(losses[-200:]),
                       "unet_minutes": (time.monotonic() - start) / 60})
        if over_budget:
            log.info("unet time budget reached at step %d", step)
            break
    bar.close()
    return {"ema": ema, "unet_steps_done": step, "unet_recent_loss": sum(losses[-200:]) / len(losses[-200:]),
            "unet_minutes": (time.monotonic() - start) / 60}


def finetune_decoder(vae, cfg: TrainConfig, out_record: dict) -> None:
    """More decoder training at the native size with the encoder frozen, so the UNet's latents stay valid.

    Starts from the fp16-rounded VAE (what was stored with the UNet), so it can also run as its own stage.
    """
    import torch

    from export.synthetic_shapes import sample_batch

    _round_to_fp16(vae)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed + 2)
    vae.train()
    start = time.monotonic()
    bar = _progress(cfg.decoder_steps, "decoder")
    step = 0
    for step in range(1, cfg.decoder_steps + 1):
        pixels, _ = sample_batch(rng, cfg.vae_batch, cfg.size, caption_dropout=0.0)
        x = torch.from_numpy(pixels)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode()
        mse = torch.nn.functional.mse_loss(vae.decode(latents).sample, x)
        optimizer_step(mse, opt, params)
        bar.update(1)
        bar.set_postfix(mse=f"{mse.item():.4f}")
        if step % 50 == 0:
            log.info("decoder step %d mse %.5f", step, mse.item())
        if (time.monotonic() - start) / 60 > cfg.decoder_minutes:
            log.info("decoder time budget reached at step %d", step)
            break
    bar.close()
    vae.eval().requires_grad_(False)
    out_record.update(decoder_steps_done=step, decoder_final_mse=float(mse.item()),
                      decoder_minutes=(time.monotonic() - start) / 60)


def train(cfg: TrainConfig, out: Path) -> dict:
    import tempfile

    import torch
    from transformers import CLIPTokenizer

    from export.clip_vocab import write_tokenizer_files

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    parts = new_components(CONFIG_DIR)
    text_encoder, unet, vae = parts["text_encoder"], parts["unet"], parts["vae"]
    text_encoder.eval().requires_grad_(False)
    _round_to_fp16(text_encoder)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)

    record: dict = {"config": asdict(cfg), "torch": torch.__version__}
    began = time.monotonic()
    scaling = train_vae(vae, cfg, rng, record)
    record["vae_scaling_factor"] = scaling
    log.info("vae done: scaling factor %.4f", scaling)
    vae.requires_grad_(False)
    pool = encode_pool(vae, text_encoder, tokenizer, cfg, rng, scaling)
    log.info("latent pool encoded: %d scenes", len(pool[0]))

    def save(ema_unet, progress: dict) -> None:
        record.update(progress, total_minutes=(time.monotonic() - began) / 60)
        # Time budgets make the step counts machine-dependent; these arguments replay exactly this run.
        replay = {**asdict(cfg), "vae_steps": record["vae_steps_done"], "unet_steps": record["unet_steps_done"],
                  "decoder_steps": record.get("decoder_steps_done", cfg.decoder_steps),
                  "vae_minutes": 1e9, "unet_minutes": 1e9, "decoder_minutes": 1e9}
        record["reproduce"] = "python -m export.train_tiny " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in replay.items())
        _save({"text_encoder": text_encoder, "unet": ema_unet, "vae": vae}, out, record)

    progress = train_unet(unet, pool, cfg, save)
    ema = progress.pop("ema")
    save(ema, progress)
    finetune_decoder(vae, cfg, record)
    save(ema, {})
    log.info("done: %s", json.dumps({k: v for k, v in record.items() if k != "config"}))
    return record


def decoder_stage(cfg: TrainConfig, source: Path, out: Path) -> dict:
    """The decoder stage alone, on a finished or checkpointed run (it only needs the stored VAE)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    vae = new_components(CONFIG_DIR)["vae"]
    vae.load_state_dict({k: v.float() for k, v in load_file(source / "vae.safetensors").items()})
    record: dict = {}
    finetune_decoder(vae, cfg, record)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in vae.state_dict().items()}, out / "vae.safetensors")
    (out / "decoder.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.train_tiny", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--decoder-only-from", type=Path, default=None,
                        help="run only the decoder stage on the VAE stored in this folder; writes vae.safetensors "
                             "and decoder.json to --out")
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out, source = args.pop("out"), args.pop("decoder_only_from")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if source is None:
        train(TrainConfig(**args), out)
    else:
        decoder_stage(TrainConfig(**args), source, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Switching LoRA sets on a full-size SD 1.5 bundle: merge + new sessions, against creating the base sessions.

    python -m benchmarks.lora_switch [--bundle PATH] [--rank 32]

A kohya-layout LoRA is generated over kohya's default targets (every attention projection, feed-forward and
proj_in/out Linear of the UNet's transformer blocks, every text-encoder attention/MLP Linear: 192 + 72 weights at SD
1.5 size), from the bundle's lora_map.json. Measured in this process (run it alone: it needs ~8 GiB): the base
UNet + text encoder session creation, the first switch to a set (read the base weights, merge, create the
sessions), a switch back to a cached set, a second set, and the peak RSS. Issue #15's target: the first switch
≤ 1.5× the base session creation.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_PARTS = ("to_q", "to_k", "to_v", "to_out_0", "ff_net_0_proj", "ff_net_2", "proj_in", "proj_out")
TE_PARTS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def kohya_default_targets(lora_map) -> list[str]:
    keys = []
    for key in lora_map.targets:
        if key.endswith(".bias"):
            continue
        if key.startswith("lora_unet_") and "attentions" in key and key.endswith(TARGET_PARTS):
            keys.append(key)
        elif key.startswith("lora_te") and key.endswith(TE_PARTS):
            keys.append(key)
    return keys


def write_lora(path: Path, lora_map, keys: list[str], rank: int, seed: int) -> None:
    from engine.safetensors_file import write_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for key in keys:
        shape = lora_map.targets[key].shape
        out_ch, in_ch = shape[0], int(np.prod(shape[1:]))
        kernel = tuple(shape[2:])
        tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, in_ch // max(1, int(np.prod(kernel))),
                                                                   *kernel)) * 0.01).astype(np.float16)
        tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((out_ch, rank, *((1, 1) if kernel else ())))
                                            * 0.01).astype(np.float16)
        tensors[f"{key}.alpha"] = np.asarray(rank / 2, dtype=np.float16)
    write_file(path, tensors)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import peak_rss_mib
    from engine.lora import LoraMap, NetworkUse, load_network
    from engine.network_sessions import ModelNetworks
    from engine.pipeline import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args(argv)
    if args.bundle is None:
        from benchmarks.full_models import ensure_full_models

        args.bundle = ensure_full_models().bundle
    lora_map = LoraMap.load(args.bundle)
    if lora_map is None:
        raise SystemExit(f"{args.bundle} has no lora_map.json (exported before LoRA support): re-export it")
    keys = kohya_default_targets(lora_map)
    start = time.perf_counter()
    pipeline = Pipeline.from_path(args.bundle)  # creates the UNet and text-encoder sessions (it reads their IO)
    for component in ("unet", "text_encoder"):
        pipeline.backend.session(component)
    base_seconds = time.perf_counter() - start
    networks = ModelNetworks(pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"set{i}.safetensors" for i in (1, 2)]
        for i, path in enumerate(files):
            write_lora(path, lora_map, keys, args.rank, seed=i)
        loaded = [load_network(p) for p in files]
        timings = {}
        for label, index in (("first switch (merge + sessions)", 0), ("cached switch back", 0),
                             ("second set (merge + sessions)", 1), ("cached switch to the first", 0)):
            use = [(loaded[index], NetworkUse(loaded[index].name, 1.0, 1.0), str(files[index]))]
            start = time.perf_counter()
            networks.pipeline_for(use)
            timings.setdefault(label, time.perf_counter() - start)
    print(f"bundle {args.bundle}: {len(keys)} LoRA targets at rank {args.rank}")
    print("| step | seconds | × base session creation |")
    print("|---|---|---|")
    print(f"| base UNet + text encoder sessions | {base_seconds:.2f} | 1.00 |")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds:.2f} | {seconds / base_seconds:.2f} |")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (base sessions + two LoRA sets cached)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

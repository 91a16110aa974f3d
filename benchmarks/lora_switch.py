"""Switching LoRA sets: merge + new sessions, against creating the model's base sessions (issue #15).

    flock /tmp/team/fullsize.lock python -m benchmarks.lora_switch [--bundle PATH] [--rank 32]
        [--levels extended all] [--unet-size 512] [--rounds 3]

Without --bundle: the full-size random-weight SD 1.5 bundle of `make bench-full` (~8–12 GiB peak: run it alone,
under the full-size lock). `make bench` runs the same table on the demo bundle (`run()`).

A kohya-layout LoRA is generated over kohya's default targets (every attention projection, feed-forward and
proj_in/out Linear of the UNet's transformer blocks, every text-encoder attention/MLP Linear: 192 + 72 weights at SD
1.5 size), from the bundle's lora_map.json. Measured in one process: the base UNet + text encoder session creation;
then per ORT optimisation level of the LoRA sessions: the merge alone, the first switch to a set (merge, sessions;
the components concurrently), a switch back to the cached set, and the UNet call time of the LoRA session against
the base session (interleaved rounds at --unet-size, batch 2 = one CFG step; medians). Issue #15's target: the
first switch ≤ 1.5× the base session creation.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
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


def unet_inputs(pipeline, size: int) -> dict[str, np.ndarray]:
    """One CFG step's UNet inputs (batch 2) at `size` px, from the component's input specs."""
    rng = np.random.default_rng(0)
    latent = pipeline.latent_shape(size, size)
    feeds = {}
    for spec in pipeline.backend.input_specs("unet"):
        if spec.name == "sample":
            shape = (2, *latent)
        elif spec.name == "encoder_hidden_states":
            shape = (2, 77, int(spec.shape[-1]))
        else:
            shape = tuple(d if isinstance(d, int) else 2 for d in spec.shape)
        if spec.dtype.startswith("float"):
            feeds[spec.name] = (rng.standard_normal(shape) * (500 if spec.name == "timestep" else 1)).astype(spec.dtype)
        else:
            feeds[spec.name] = np.full(shape, 500, dtype=spec.dtype)
    return feeds


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run(bundle: Path, rank: int = 32, say: Callable[[str], None] = print, levels: tuple[str, ...] = ("all",),
        unet_size: int = 512, rounds: int = 3) -> dict:
    """The LoRA switching table for `bundle`; returns the numbers."""
    from engine.backend import release_memory
    from engine.lora import LoraMap, NetworkUse, load_network, merged_weights
    from engine.network_sessions import ModelNetworks
    from engine.pipeline import Pipeline

    lora_map = LoraMap.load(bundle)
    if lora_map is None:
        raise SystemExit(f"{bundle} has no lora_map.json (exported before LoRA support): re-export it")
    keys = kohya_default_targets(lora_map)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    start = time.perf_counter()
    pipeline = Pipeline.from_path(bundle)  # creates the UNet and text-encoder sessions (it reads their IO)
    for component in ("unet", "text_encoder"):
        pipeline.backend.session(component)
    base_seconds = time.perf_counter() - start
    feeds = unet_inputs(pipeline, unet_size)
    pipeline.backend.run("unet", feeds)  # warm-up
    results: dict = {"bundle": str(bundle), "targets": len(keys), "rank": rank, "base_sessions_s": base_seconds,
                     "load_start": load, "levels": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for index, level in enumerate(levels):
            path = Path(tmp) / f"set{index}.safetensors"
            write_lora(path, lora_map, keys, rank, seed=index)
            network = load_network(path)
            use = [(network, NetworkUse(network.name, 1.0, 1.0), str(path))]
            merge_s = _timed(lambda n=network: merged_weights(bundle, lora_map, [(n, NetworkUse(n.name))]))
            release_memory()
            networks = ModelNetworks(pipeline, optimization=None if level == "default" else level)
            first = _timed(lambda u=use, n=networks: n.pipeline_for(u))
            backend = networks.pipeline_for(use)[0].backend
            cached = _timed(lambda u=use, n=networks: n.pipeline_for(u))
            backend.run("unet", feeds)  # warm-up
            base_calls, lora_calls = [], []
            for _ in range(rounds):
                base_calls.append(_timed(lambda: pipeline.backend.run("unet", feeds)))
                lora_calls.append(_timed(lambda b=backend: b.run("unet", feeds)))
            results["levels"][level] = {
                "merge_s": merge_s, "first_switch_s": first, "cached_switch_s": cached,
                "rebuilt": sorted(backend.sessions), "unet_call_base_s": base_calls, "unet_call_lora_s": lora_calls,
            }
            networks.sessions.clear()
            backend = networks = None
            gc.collect()
            release_memory()
    # The base sessions once more, after the switches (a fresh backend, the others dropped): the machine's load
    # drifts, so the ratio is given against the mean of the two.
    pipeline = feeds = None
    gc.collect()
    release_memory()
    start = time.perf_counter()
    again = Pipeline.from_path(bundle)
    for component in ("unet", "text_encoder"):
        again.backend.session(component)
    results["base_sessions_again_s"] = time.perf_counter() - start
    results["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for line in table(results, unet_size):
        say(line)
    return results


def _seconds(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def table(results: dict, unet_size: int) -> list[str]:
    first, again = results["base_sessions_s"], results["base_sessions_again_s"]
    base = (first + again) / 2
    lines = [f"bundle {results['bundle']}: {results['targets']} LoRA targets at rank {results['rank']}; "
             f"load average {results['load_start']} at start, {results['load_end']} at end",
             "| LoRA sessions at ORT level | merge s | first switch s | × base session creation | cached switch s "
             "| UNet call base s | UNet call LoRA s | LoRA / base |",
             "|---|---|---|---|---|---|---|---|",
             f"| (base UNet + text encoder session creation: {first:.2f} s before, {again:.2f} s after; "
             f"mean {base:.2f} s) | | | 1.00 | | | | |"]
    for level, r in results["levels"].items():
        b, lo = statistics.median(r["unet_call_base_s"]), statistics.median(r["unet_call_lora_s"])
        lines.append(f"| {level} | {r['merge_s']:.2f} | {r['first_switch_s']:.2f} | {r['first_switch_s'] / base:.2f} "
                     f"| {r['cached_switch_s']:.3f} | {b:.2f} | {lo:.2f} | {lo / b:.3f} |")
    lines.append(f"UNet calls: batch 2 at {unet_size} px, medians of interleaved base/LoRA rounds: "
                 + "; ".join(f"{lv}: base {_seconds(r['unet_call_base_s'])} LoRA {_seconds(r['unet_call_lora_s'])}"
                             for lv, r in results["levels"].items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import peak_rss_mib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--levels", nargs="+", default=["all"],
                        help="ORT optimisation levels of the LoRA sessions to measure (extended, all, default)")
    parser.add_argument("--unet-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.bundle is None:
        from benchmarks.full_models import ensure_full_models

        args.bundle = ensure_full_models().bundle
    run(args.bundle, args.rank, levels=tuple(args.levels), unet_size=args.unet_size, rounds=args.rounds)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

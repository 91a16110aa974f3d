"""A LoRA set on the OpenVINO backend (engine/openvino_networks.py): switch time, UNet call, memory (issue #16).

    flock /tmp/team/fullsize.lock python -m benchmarks.openvino_lora --bundle PATH [--precision bf16] [--rank 32]

`--bundle` must be writable (bf16 writes OpenVINO's f16 IR into it: a `cp -al` copy of the full-size bundle does).
The same generated kohya LoRA as benchmarks/lora_switch.py (kohya's default targets). In one process: the base UNet
compiled for --unet-size (batch 2 = one CFG step) and called; the switch to the set (merge + Constants replaced in
the UNet's and text encoder's models, no compile yet); the LoRA UNet's first call (its compile) and then
interleaved base/LoRA calls (medians); RSS after each stage and the peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.lora_switch import _timed, kohya_default_targets, unet_inputs, write_lora


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(bundle: Path, precision: str, rank: int, unet_size: int, rounds: int, threads: int) -> list[str]:
    from engine.backend import BackendChoice, release_memory
    from engine.lora import LoraMap, NetworkUse, load_network
    from engine.network_sessions import ModelNetworks
    from engine.pipeline import Pipeline

    lora_map = LoraMap.load(bundle)
    keys = kohya_default_targets(lora_map)
    lines = [f"bundle {bundle}, OpenVINO {precision}, {threads} threads; {len(keys)} LoRA targets at rank {rank}; "
             f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start"]
    pipeline = Pipeline.from_path(bundle, choice=BackendChoice("openvino", precision, threads))
    feeds = unet_inputs(pipeline, unet_size)
    first_base = _timed(lambda: pipeline.backend.run("unet", feeds))
    release_memory()
    lines.append(f"base UNet first call (compile for {unet_size} px, f16 IR written if missing) {first_base:.2f} s; "
                 f"RSS {rss_mib():.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "set.safetensors"
        write_lora(path, lora_map, keys, rank, seed=0)
        network = load_network(path)
        use = [(network, NetworkUse(network.name, 1.0, 1.0), str(path))]
        networks = ModelNetworks(pipeline)
        switch = _timed(lambda: networks.pipeline_for(use))
        backend = networks.pipeline_for(use)[0].backend
        release_memory()
        lines.append(f"switch (merge + Constants replaced in {sorted(backend.sessions)}, no compile) {switch:.2f} s; "
                     f"RSS {rss_mib():.0f} MiB")
        first_lora = _timed(lambda: backend.run("unet", feeds))
        release_memory()
        lines.append(f"LoRA UNet first call (its compile) {first_lora:.2f} s; RSS {rss_mib():.0f} MiB")
        base_calls, lora_calls = [], []
        for _ in range(rounds):
            base_calls.append(_timed(lambda: pipeline.backend.run("unet", feeds)))
            lora_calls.append(_timed(lambda: backend.run("unet", feeds)))
        b, lo = statistics.median(base_calls), statistics.median(lora_calls)
        lines.append(f"UNet call (batch 2, {unet_size} px), medians of {rounds} interleaved rounds: base {b:.2f} s, "
                     f"LoRA {lo:.2f} s (LoRA / base {lo / b:.3f}); RSS {rss_mib():.0f} MiB")
    lines.append(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    return lines


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import peak_rss_mib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--unet-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for line in run(args.bundle, args.precision, args.rank, args.unet_size, args.rounds, args.threads):
        print(line, flush=True)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a full-size model's memory goes: one fresh process per backend setting loads the bundle's components
one at a time and runs each at one size, printing RSS (anonymous vs file-mapped) after each step as JSON.

`python -m benchmarks.memory_full --bundle B --size 512 --setting ort-default` (one setting per process, so
each peak is its own); benchmarks/full.py runs it per setting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import peak_rss_mib, reset_peak_rss

# ORT session settings measured (engine/backend.py MemoryPolicy fields and ORT session config entries).
SETTINGS: dict[str, dict] = {
    "ort-default": {},
    "ort-no-prepack": {"disable_prepacking": True},
    "ort-no-prepack-no-pattern": {"disable_prepacking": True, "mem_pattern": False},
    "ort-no-arena": {"cpu_mem_arena": False, "mem_pattern": False},
    "openvino-fp32": {"openvino": "fp32"},
    "openvino-bf16": {"openvino": "bf16"},
}


def status_mib() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def feeds(component: str, bundle, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lat = size // bundle.manifest.vae_scale_factor
    if component == "text_encoder":
        ids = np.full((1, 77), bundle.manifest.eos_token_id, np.int64)
        ids[0, 0] = bundle.manifest.bos_token_id
        table = bundle.manifest.text_token_tables.get("text_encoder")
        if table:  # textual-inversion graphs take the token rows too (export/text_inputs_embeds.py)
            return {"input_ids": ids, "inputs_embeds": np.asarray(np.load(bundle.path / table, mmap_mode="r")[ids])}
        return {"input_ids": ids}
    if component == "unet":
        return {"sample": rng.standard_normal((2, 4, lat, lat), dtype=np.float32),
                "timestep": np.full((2,), 500.0, np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, bundle.manifest.text_hidden_size),
                                                             dtype=np.float32)}
    return {"latent_sample": rng.standard_normal((1, 4, lat, lat), dtype=np.float32)}


def make_backend(bundle, setting: dict, threads: int):
    if "openvino" in setting:
        from engine.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(bundle, setting["openvino"], threads)
    from engine.backend import MemoryPolicy, OrtBackend

    policy = MemoryPolicy(**{k: v for k, v in setting.items() if k in MemoryPolicy.__dataclass_fields__})
    return OrtBackend(bundle, "cpu", intra_op_threads=threads, memory=policy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_full")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="ort-default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    from engine.backend import release_memory
    from engine.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    backend = make_backend(bundle, SETTINGS[args.setting], args.threads)
    steps = [{"step": "start", **status_mib()}]
    for component in ("text_encoder", "unet", "vae_decoder"):
        inputs = feeds(component, bundle, args.size)
        times, peaks = [], []
        for _ in range(args.runs):
            # Each run's own peak (the first includes session creation / OpenVINO's compile): VmHWM reset before.
            reset_peak_rss()
            start = time.perf_counter()
            backend.run(component, inputs)
            times.append(round(time.perf_counter() - start, 2))
            peaks.append(round(peak_rss_mib() or 0, 1))
        release_memory()
        steps.append({"step": component, "seconds": times, "run_peaks": peaks, **status_mib()})
    peak = max([steps[0]["VmHWM"], *(p for step in steps[1:] for p in step["run_peaks"])])
    print(json.dumps({"setting": args.setting, "size": args.size, "steps": steps, "peak_rss_mib": peak}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

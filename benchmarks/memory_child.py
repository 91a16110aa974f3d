"""One txt2img through the sdapi server code in a fresh process; prints its memory as one JSON line.

Run by benchmarks/memory.py once per size, so each size's peak RSS (VmHWM) is its own and not the high-water
mark left by a larger one before it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.machine import peak_rss_mib


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_child")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--memory-budget", type=float, default=None, help="GiB; default: the server's default")
    args = parser.parse_args(argv)

    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    with tempfile.TemporaryDirectory() as tmp:
        extra = {} if args.memory_budget is None else {"memory_budget": int(args.memory_budget * 2**30)}
        config = ServerConfig(model=args.bundle, models_dir=Path(tmp) / "models", options_file=Path(tmp) / "o.json",
                              **extra)
        state = ServerState(config)
        with TestClient(create_app(state)) as client:
            state.load_default()
            # Warm-up at 64 px: sessions created, so the loaded baseline is measured, not the first-call set-up.
            client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 1, "width": 64, "height": 64})
            loaded = rss_mib()
            start = time.perf_counter()
            response = client.post("/sdapi/v1/txt2img", json={
                "prompt": "a red circle on a blue background", "steps": args.steps, "width": args.size,
                "height": args.size, "batch_size": args.batch, "sampler_name": "Euler", "cfg_scale": 7,
                "seed": 1})
            seconds = time.perf_counter() - start
            after = rss_mib()
        state.close()
    print(json.dumps({"size": args.size, "batch": args.batch, "status": response.status_code,
                      "loaded_rss_mib": round(loaded, 1), "peak_rss_mib": round(peak_rss_mib() or 0, 1),
                      "rss_after_mib": round(after, 1), "seconds": round(seconds, 2),
                      "detail": None if response.status_code == 200 else response.text[:300]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

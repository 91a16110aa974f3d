"""Peak RSS of the server process for one image per size on the default (shapes) model: `make bench`'s memory
table, also `python -m benchmarks.memory`.

Each size runs in a fresh process (benchmarks/memory_child.py: the sdapi app through FastAPI's TestClient, one
warm-up at 64 px, then one txt2img), so each peak (VmHWM) is that size's own. RSS after the request shows
whether memory went back to the OS. Steps are few: peak memory does not depend on them, time does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (256, 512, 768, 1024, 2048)


def measure(bundle: Path, size: int, steps: int, timeout: float = 3600) -> dict:
    command = [sys.executable, "-m", "benchmarks.memory_child", "--bundle", str(bundle), "--size", str(size),
               "--steps", str(steps)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"size": size, "status": f"exit {proc.returncode}", "detail": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> list[str]:
    by_size = {r["size"]: r for r in rows}
    base = by_size.get(512, {}).get("peak_rss_mib")
    lines = ["| size | status | loaded RSS MiB | peak RSS MiB | peak / 512 px peak | RSS after MiB | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r.get("peak_rss_mib")
        ratio = f"{peak / base:.2f}" if peak and base else "–"
        lines.append(f"| {r['size']}×{r['size']} | {r['status']} | {r.get('loaded_rss_mib', '–')} | {peak or '–'} | "
                     f"{ratio} | {r.get('rss_after_mib', '–')} | {r.get('seconds', '–')} |")
    return lines


def run(bundle: Path, sizes: list[int], steps: int, big_steps: int, say: Callable[[str], None] = print) -> list[dict]:
    say(f"peak RSS of the server process, one image, shapes model ({bundle}), Euler, {steps} steps "
        f"({big_steps} at 2048 px):")
    rows = []
    for size in sizes:
        row = measure(bundle, size, big_steps if size >= 2048 else steps)
        rows.append(row)
        say(f"  {json.dumps(row)}")
    for line in table(rows):
        say(line)
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.models import ensure_models

    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--big-steps", type=int, default=1, help="steps at 2048 px (its attention is slow)")
    args = parser.parse_args(argv)
    run(ensure_models().shapes, args.sizes, args.steps, args.big_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

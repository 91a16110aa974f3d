"""`--workers 1` against `--workers N` (issue 17): the same txt2img requests from 4 concurrent clients to a server
with one worker and to one with N; images/s of each, their ratio, and whether the images are byte-identical.
`python -m benchmarks.workers [--model BUNDLE] [--workers 2] [--size 256] [--steps 20]`.

With N workers each ONNX Runtime session gets cores/N intra-op threads (service/runtime/workers.py), so the
cores are shared, not oversubscribed; on a machine with as many cores as one job already keeps busy, N workers
only overlap the parts of a job that use one core (Python sampler code, PNG encoding, prompt encoding).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.concurrency import _generate, _start, measure


def run(bundle: Path, workers: int = 2, requests_n: int = 8, clients: int = 4, size: int = 256, steps: int = 20,
        say=print) -> dict:
    rows = []
    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, workers):
            workdir = Path(tmp) / str(n)
            workdir.mkdir()
            proc, url = _start(bundle, workdir, ["--workers", str(n)])
            try:
                _generate(url, {"width": size, "height": size, "steps": 2})  # warm-up: sessions created
                images_per_s, digests[n] = measure(url, requests_n, clients, size, steps)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            rows.append((n, images_per_s))
    one = rows[0][1]
    say("")
    say(f"## Workers (issue 17): {requests_n} txt2img {size} px, {steps} steps, {clients} concurrent clients, "
        f"{bundle.name}")
    say("")
    say("| --workers | images/s | ratio to 1 worker | images byte-identical to 1 worker's |")
    say("|---|---|---|---|")
    for n, images_per_s in rows:
        say(f"| {n} | {images_per_s:.3f} | {images_per_s / one:.2f} | {'yes' if digests[n] == digests[1] else 'NO'} |")
    return {"rows": [{"workers": n, "images_per_s": v, "ratio": v / one} for n, v in rows],
            "byte_identical": digests[workers] == digests[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the bench's shapes model)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    bundle = args.model
    if bundle is None:
        from benchmarks.models import ensure_models

        bundle = ensure_models().shapes
    run(bundle, args.workers, args.requests, args.clients, args.size, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

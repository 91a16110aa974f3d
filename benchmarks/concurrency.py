"""Throughput of one `sdedge serve` process under concurrent clients (issue 17): N txt2img requests sent by one
client one after another, then the same N requests (same seeds) from 4 clients at once; images/s of each, their
ratio, and whether every image is byte-identical between the two runs. `python -m benchmarks.concurrency`, and the
last table of `make bench`.

Without batching the queue runs one job at a time, so the ratio stays near 1; with `--batch-max` the jobs that wait
together run as one UNet batch (service/runtime/batching.py).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(bundle: Path, workdir: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--model", str(bundle), "--port", str(port),
                             "--grpc-port", "0", "--models-dir", str(workdir / "models"),
                             "--options-file", str(workdir / "config.json"), *flags],
                            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "server.log").read_text()[-3000:])
        try:
            if requests.get(f"{url}/internal/ping", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def _generate(url: str, body: dict) -> str:
    r = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=600)
    r.raise_for_status()
    return hashlib.sha256(base64.b64decode(r.json()["images"][0])).hexdigest()


def measure(url: str, requests_n: int, clients: int, size: int, steps: int) -> tuple[float, dict[int, str]]:
    bodies = [{"prompt": "a red circle on a blue square", "seed": 1000 + i, "width": size, "height": size,
               "steps": steps} for i in range(requests_n)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        digests = list(pool.map(lambda b: _generate(url, b), bodies))
    seconds = time.perf_counter() - start
    return requests_n / seconds, {b["seed"]: d for b, d in zip(bodies, digests, strict=True)}


def run(bundle: Path, say=print, requests_n: int = 16, clients: int = 4, size: int = 64, steps: int = 20,
        batch_max: int = 4, windows_ms: tuple[float, ...] = (0.0, 100.0)) -> dict:
    """The sequential baseline without batching, then `clients` concurrent clients without batching and with
    `--batch-max batch_max` at each gather window."""
    configs = [("no batching", [])] + [(f"--batch-max {batch_max} --batch-window-ms {w:g}",
                                        ["--batch-max", str(batch_max), "--batch-window-ms", str(w)])
                                       for w in windows_ms]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags) in enumerate(configs):
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            proc, url = _start(bundle, workdir, flags)
            try:
                _generate(url, {"width": size, "height": size, "steps": 2})  # warm-up
                if i == 0:
                    one, alone = measure(url, requests_n, 1, size, steps)
                many, together = measure(url, requests_n, clients, size, steps)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            rows.append((name, many, together == alone))
    say("")
    say(f"## Concurrent clients (issue 17): {requests_n} txt2img {size} px, {steps} steps, one prompt, "
        f"{requests_n} seeds, {bundle.name}")
    say("")
    say("| clients | server | images/s | ratio to 1 client | images byte-identical to 1 client's |")
    say("|---|---|---|---|---|")
    say(f"| 1 (sequential) | no batching | {one:.2f} | 1.00 | |")
    for name, many, same in rows:
        say(f"| {clients} (concurrent) | {name} | {many:.2f} | {many / one:.2f} | {'yes' if same else 'NO'} |")
    return {"sequential_images_per_s": one, "rows": [{"server": n, "images_per_s": m, "ratio": m / one,
                                                      "byte_identical": same} for n, m, same in rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the bench's shapes model)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    bundle = args.model
    if bundle is None:
        from benchmarks.models import ensure_models

        bundle = ensure_models().shapes
    result = run(bundle, requests_n=args.requests, clients=args.clients, size=args.size, steps=args.steps)
    return 0 if all(row["byte_identical"] for row in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())

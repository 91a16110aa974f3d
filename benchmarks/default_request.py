"""The embedded default model under an A1111-default request, against the previous release, in one run (issue 16).

`python -m benchmarks.default_request` starts the real server (`python -m service.cli serve`) of each release in
its own process, sends `{"prompt": ...}` (A1111's defaults: 512×512, 50 steps, Euler a, CFG 7) a few times to each, alternating
between the servers (so load drift on a shared machine falls on all alike), and
reads the server process's own memory from /proc/<pid>/status: RSS once the model is loaded, RSS after each
request, and its peak (VmHWM). Time = wall time of each HTTP request and the server's CPU time (user + system,
all threads) during it: on a shared machine the CPU time is the steadier of the two. A 1-step request first
(`--cold`: none) creates the sessions (OpenVINO: compiles for 512 px), so the timed ones are steady-state.

The previous release is a plain copy of an older commit (`git archive REV`, no checkout, no worktree) with its own
default bundle exported by its own exporter (`python -m export shapes` run inside the copy), so each release
serves the bundle it would have built: `--previous REV` prepares it once under `--work`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.machine import load_average

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a blue background"
PREVIOUS = "b8d2bbb"  # main before session 4: the release issue 16 measured (28 s, 2.6 GiB after)


def prepare_previous(rev: str, work: Path) -> tuple[Path, Path]:
    """(code, bundle) of the release at `rev`: `git archive` into `work/<rev>` and its own shapes export."""
    code = work / rev
    bundle = code / "models" / "sdedge-shapes"
    if not (bundle / "manifest.json").is_file():
        code.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        subprocess.run([sys.executable, "-m", "export", "shapes", "--out", str(bundle)], cwd=code, check=True,
                       env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True)
    return code, bundle


def status_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads): on a machine shared with other work it moves
    far less with the load than wall time does."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


class Server:
    """One server process of the release in `code` serving `bundle` (stopped by `stop`)."""

    def __init__(self, label: str, code: Path, bundle: Path, serve_args: list[str], threads: int | None):
        self.label, self.serve_args = label, serve_args
        self.tmp = Path(tempfile.mkdtemp(prefix="sdedge-default-"))
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(code)}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "service.cli", "serve", "--model", str(bundle), "--port", str(self.port),
                   "--models-dir", str(self.tmp / "models"), "--options-file", str(self.tmp / "options.json"),
                   *serve_args]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(self.tmp / "server.log", "w"))
        self.row: dict = {"release": label, "serve_args": " ".join(serve_args), "seconds": [], "rss_after_mib": [],
                          "load_average": []}

    def wait_ready(self) -> None:
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: server exited: {(self.tmp / 'server.log').read_text()[-800:]}")
            try:
                with urllib.request.urlopen(self.base + "/sdapi/v1/sd-models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        self.row["ready_s"] = round(time.perf_counter() - self.started, 2)
        self.row["loaded_rss_mib"] = status_mib(self.process.pid)["VmRSS"]

    def warm_up(self, timeout: float = 1800) -> None:
        """One 1-step request at the default size: sessions created, OpenVINO's compile for 512 px done."""
        start = time.perf_counter()
        status, _ = _post(self.base + "/sdapi/v1/txt2img", {"prompt": PROMPT, "steps": 1}, timeout)
        self.row["warmup_s"] = round(time.perf_counter() - start, 2)

    def request(self, timeout: float = 1800) -> None:
        self.row["load_average"].append(round(load_average()[0], 2))
        cpu, start = cpu_seconds(self.process.pid), time.perf_counter()
        status, body = _post(self.base + "/sdapi/v1/txt2img", {"prompt": PROMPT}, timeout)
        self.row["seconds"].append(round(time.perf_counter() - start, 2))
        self.row.setdefault("cpu_seconds", []).append(round(cpu_seconds(self.process.pid) - cpu, 2))
        if status != 200 or not body.get("images"):
            raise RuntimeError(f"{self.label}: HTTP {status}")
        time.sleep(1.0)  # the worker's post-job release runs after the response is sent
        self.row["rss_after_mib"].append(status_mib(self.process.pid)["VmRSS"])
        info = json.loads(body["info"])
        self.row.update(steps=info.get("steps"), size=f"{info.get('width')}x{info.get('height')}",
                        sampler=info.get("sampler_name"))
        self.row["peak_rss_mib"] = status_mib(self.process.pid)["VmHWM"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def measure(servers: list[Server], requests: int, warm_up: bool = True) -> list[dict]:
    """Requests alternate between the servers (each idle while another works), so load drift on a shared
    machine falls on all of them alike."""
    try:
        for server in servers:
            server.wait_ready()
            if warm_up:
                server.warm_up()
        for _ in range(requests):
            for server in servers:
                server.request()
                print(json.dumps(server.row), flush=True)
    finally:
        for server in servers:
            server.stop()
    return [server.row for server in servers]


def table(rows: list[dict]) -> list[str]:
    base = rows[0]
    lines = ["| release | serve flags | request s (wall) | ÷ previous | CPU s | ÷ previous | loaded RSS MiB | "
             "RSS after MiB | peak RSS MiB | load avg at each request |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall, cpu = statistics.median(r["seconds"]), statistics.median(r["cpu_seconds"])
        lines.append(f"| {r['release']} | `{r['serve_args'] or '(defaults)'}` | {' / '.join(map(str, r['seconds']))} | "
                     f"{wall / statistics.median(base['seconds']):.2f} | {' / '.join(map(str, r['cpu_seconds']))} | "
                     f"{cpu / statistics.median(base['cpu_seconds']):.2f} | {r['loaded_rss_mib']:.0f} | "
                     f"{' / '.join(f'{x:.0f}' for x in r['rss_after_mib'])} | {r['peak_rss_mib']:.0f} | "
                     f"{' / '.join(map(str, r['load_average']))} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.default_request", description=__doc__)
    parser.add_argument("--previous", default=PREVIOUS, help="the previous release's git revision")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "previous-release",
                        help="where the previous release's copy and bundle are kept")
    parser.add_argument("--bundle", type=Path, required=True,
                        help="this release's default bundle (a writable copy: OpenVINO writes its f16 IR into it)")
    parser.add_argument("--variant", action="append", default=None, metavar="FLAGS",
                        help="serve flags of one run of this release, e.g. '--backend openvino --precision bf16' "
                             "(repeatable; default: one run with the defaults)")
    parser.add_argument("--requests", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="no 1-step warm-up request before the timed ones")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    code, bundle = prepare_previous(args.previous, args.work)
    servers = [Server(f"previous ({args.previous})", code, bundle, [], args.threads)]
    for flags in args.variant or [""]:
        servers.append(Server("this", ROOT, args.bundle, flags.split(), args.threads))
    rows = measure(servers, args.requests, not args.cold)
    for line in table(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

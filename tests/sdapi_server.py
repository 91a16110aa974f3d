"""A real `sdedge serve` process for the sdapi tests: the demo bundle plus a renamed copy in its models dir."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SECOND = "sdedge-tiny-b"
SECOND_SHA256 = hashlib.sha256(SECOND.encode()).hexdigest()
FAST = {"steps": 1, "width": 64, "height": 64}  # the smallest real generation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def second_bundle(demo_bundle: Path, models_dir: Path) -> Path:
    """A copy of the demo bundle that the server sees as another checkpoint (own name and hash)."""
    target = models_dir / SECOND
    shutil.copytree(demo_bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(name=SECOND, source_sha256=SECOND_SHA256)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@contextmanager
def running_server(demo_bundle: Path, workdir: Path, *args: str, second_model: bool = True,
                   grpc: bool = False) -> Iterator[str]:
    """Yields the base URL (with `grpc`, the pair (URL, gRPC target)); the server's output is in
    `workdir/server.log`."""
    models = workdir / "models"
    models.mkdir(parents=True, exist_ok=True)
    if second_model and not (models / SECOND).exists():
        second_bundle(demo_bundle, models)
    for _attempt in range(3):
        port, grpc_port = free_port(), (free_port() if grpc else 0)
        log = open(workdir / "server.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--model", str(demo_bundle), "--port", str(port),
             "--models-dir", str(models), "--options-file", str(workdir / "config.json"),
             "--grpc-port", str(grpc_port), "--data-dir", str(workdir), *args],
            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            if _ready(proc, url, workdir / "server.log"):
                yield (url, f"127.0.0.1:{grpc_port}") if grpc else url
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    raise RuntimeError(f"server did not start: {(workdir / 'server.log').read_text()[-3000:]}")


def _ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120.0) -> bool:
    """True once this process has bound its port (its own log says so) and answers; False when it exited
    because a port was taken meanwhile (the caller retries on new ports)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            text = log.read_text()
            if any(sign in text.lower() for sign in ("address already in use", "cannot bind grpc")):
                return False
            raise RuntimeError(f"server exited: {text[-3000:]}")
        # Another process that happens to hold the port could answer the ping; the log line is ours alone.
        if f"Uvicorn running on {url}" in log.read_text():
            try:
                if requests.get(f"{url}/internal/ping", timeout=2).status_code == 200:
                    return True
            except requests.ConnectionError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not start in {timeout:.0f} s: {log.read_text()[-3000:]}")


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png_b64(image: Image.Image, **text: str) -> str:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return base64.b64encode(out.getvalue()).decode()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.02):
    """The first truthy value of `predicate()`, polled until `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s")


def progress(url: str, **params) -> dict:
    return requests.get(f"{url}/sdapi/v1/progress", params=params, timeout=10).json()


class Background:
    """A request run on a thread; `.result()` waits for its response."""

    def __init__(self, fn, *args, **kwargs):
        self._value = None
        self._error: BaseException | None = None

        def target():
            try:
                self._value = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the test thread
                self._error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 120.0):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("background request did not finish")
        if self._error is not None:
            raise self._error
        return self._value


def running_task(url: str, task_id: str, min_step: int = 1, job_no: int = 0) -> dict:
    """/progress once `task_id` is sampling at `min_step` or later of batch `job_no`."""

    def ready():
        p = progress(url, skip_current_image=True)
        s = p["state"]
        if p["current_task"] == task_id and (s["job_no"], s["sampling_step"]) >= (job_no, min_step):
            return p
        return None

    return wait_until(ready)

"""/sdapi/v1/server-kill, /server-restart and /server-stop with `--api-server-stop` (A1111 modules/api/api.py:
Api.kill_webui, restart_webui, stop_webui, Api.__init__), each
against a real server process: kill exits at once, restart is an empty 501 (sdedge runs under no restart loop),
stop answers `Stopping.` and shuts down gracefully."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.sdapi_server import ROOT, _ready, free_port


@contextmanager
def server_process(demo_bundle: Path, workdir: Path):
    port = free_port()
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--model", str(demo_bundle), "--port", str(port),
             "--models-dir", str(workdir / "models"), "--options-file", str(workdir / "config.json"),
             "--grpc-port", "0", "--api-server-stop"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            assert _ready(proc, url, log_path), log_path.read_text()[-2000:]
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=20)


def test_restart_is_501_then_stop_shuts_down(demo_bundle, tmp_path):
    with server_process(demo_bundle, tmp_path) as (proc, url):
        assert requests.get(f"{url}/sdapi/v1/cmd-flags", timeout=10).json()["api_server_stop"] is True
        r = requests.post(f"{url}/sdapi/v1/server-restart", timeout=10)
        assert r.status_code == 501 and r.content == b""
        assert requests.get(f"{url}/internal/ping", timeout=10).status_code == 200  # still up
        r = requests.post(f"{url}/sdapi/v1/server-stop", timeout=10)
        assert r.status_code == 200 and r.text == "Stopping."
        assert proc.wait(timeout=30) == 0  # a graceful exit
    assert "Shutting down" in (tmp_path / "server.log").read_text()


def test_kill_exits_at_once(demo_bundle, tmp_path):
    with server_process(demo_bundle, tmp_path) as (proc, url):
        started = time.time()
        try:
            requests.post(f"{url}/sdapi/v1/server-kill", timeout=10)
        except requests.ConnectionError:
            pass  # A1111 exits without answering
        assert proc.wait(timeout=10) == 0 and time.time() - started < 10

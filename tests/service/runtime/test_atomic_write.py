"""A `kill -9` at any moment of an options write leaves a file that loads: writer processes are killed at random
points (kill_writer.py), and after every kill the file is loaded as a starting server loads it. The same harness
with an in-place writer finds torn files, so it can tell."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from service.runtime.atomic_write import write_atomic
from service.runtime.options import Options

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 60


def kill_writers(path: Path, mode: str, rounds: int = ROUNDS) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("kill_writer.py")), str(path), str(rounds),
                          "1234", mode], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_options_file_always_loads_after_a_kill_9_during_a_write(tmp_path):
    summary = kill_writers(tmp_path / "config.json", "atomic")
    assert summary["rounds"] >= 50
    assert summary["failed"] == 0 and summary["loaded"] == summary["rounds"], summary
    # The kills did land inside writes (a temporary file was left behind), not only between them.
    assert summary["killed_mid_write"] >= 5, summary


def test_the_harness_catches_an_in_place_writer(tmp_path):
    summary = kill_writers(tmp_path / "config.json", "naive", rounds=30)
    assert summary["failed"] >= 1, summary


def test_write_atomic_keeps_permissions_and_replaces_whole(tmp_path):
    path = tmp_path / "styles.csv"
    write_atomic(path, "name,prompt\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would create it, not 0600
    os.chmod(path, 0o640)
    write_atomic(path, b"name,prompt\na,b\n")
    assert path.read_bytes() == b"name,prompt\na,b\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["styles.csv"]  # no temporary file left


def test_options_round_trip_through_the_atomic_write(tmp_path):
    path = tmp_path / "config.json"
    Options(path).update({"jpeg_quality": 55})
    assert Options(path).get("jpeg_quality") == 55 and json.loads(path.read_text())["jpeg_quality"] == 55

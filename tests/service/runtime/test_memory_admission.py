"""Admission control (service/runtime/admission.py, engine/memory.py): a job that can never fit its memory budget is a
413 in A1111's error shape, checked before it queues; the server answers the next normal request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.bundle import load_bundle
from engine.memory import GiB, JobSize, MiB, ModelProfile, estimate_job_bytes
from service.cli.commands import build_parser
from service.http.app import create_app
from service.runtime.admission import default_budget_bytes, estimate, parse_budget
from service.runtime.state import ServerConfig, ServerState

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64}


def png_base64(size: int) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def client_with_budget(bundle, tmp_path, budget):
    state = ServerState(ServerConfig(model=bundle, models_dir=tmp_path / "models", options_file=tmp_path / "o.json",
                                     memory_budget=budget))
    return state, TestClient(create_app(state))


@pytest.mark.slow
def test_job_that_can_never_fit_is_413_then_a_small_one_runs(demo_bundle, tmp_path):
    profile = ModelProfile.of_bundle(load_bundle(demo_bundle))
    small = estimate_job_bytes(profile, JobSize(64, 64))
    large = estimate_job_bytes(profile, JobSize(512, 512, batch_size=4))
    assert small < large
    budget = (small + large) // 2
    state, client = client_with_budget(demo_bundle, tmp_path, budget)
    with client:
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, "width": 512, "height": 512, "batch_size": 4})
        assert r.status_code == 413
        body = r.json()
        assert set(body) == {"error", "detail", "body", "errors"}
        assert "memory budget" in body["detail"] and "--memory-budget" in body["detail"]
        assert f"{budget / GiB:.2f} GiB" in body["detail"] and "512×512" in body["detail"]
        r = client.post("/sdapi/v1/txt2img", json=SMALL)
        assert r.status_code == 200 and len(r.json()["images"]) == 1
    state.close()


def test_tiny_budget_refuses_everything_with_the_estimate(demo_bundle, tmp_path):
    state, client = client_with_budget(demo_bundle, tmp_path, 1 * MiB)
    with client:
        r = client.post("/sdapi/v1/txt2img", json=SMALL)
        assert r.status_code == 413 and "estimated" in r.json()["detail"] and "0.00 GiB" in r.json()["detail"]
        r = client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [png_base64(64)]})
        assert r.status_code == 413 and "64×64" in r.json()["detail"]
    state.close()


def test_profile_of_shapes_bundle(shapes_bundle):
    profile = ModelProfile.of_bundle(load_bundle(shapes_bundle))
    assert profile == ModelProfile(unet_channels=48, unet_heads=4, vae_channels=32, vae_scale_factor=8,
                                   attention_chunked=True, score_budget_bytes=64 * MiB)


def test_a1111_sizes_fit_the_default_budget(shapes_bundle):
    """Up to 2048×2048, batch 1 (and a 1024 → 2048 hires pass), within the default budget on the default
    model; unchunked attention would need the full 65536² score matrices (≈ 400 GiB)."""
    profile = ModelProfile.of_bundle(load_bundle(shapes_bundle))
    budget = default_budget_bytes()
    for job in (JobSize(2048, 2048), JobSize(1024, 1024, hires_width=2048, hires_height=2048),
                JobSize(2048, 2048, encodes=True)):
        assert estimate_job_bytes(profile, job, 128 * 128 * 64, 1024 * 1024) < min(budget, 4 * GiB)
    unchunked = ModelProfile(48, 4, 32, 8, attention_chunked=False)
    assert estimate_job_bytes(unchunked, JobSize(2048, 2048)) > 100 * GiB


def test_estimate_grows_linearly_from_512px(shapes_bundle):
    profile = ModelProfile.of_bundle(load_bundle(shapes_bundle))
    e512, e1024 = (estimate_job_bytes(profile, JobSize(s, s), 128 * 128 * 64, 1024 * 1024) for s in (512, 1024))
    assert e1024 <= 4 * e512


def test_plan_estimate_uses_hires_and_batch(demo_bundle):
    from types import SimpleNamespace

    profile = ModelProfile.of_bundle(load_bundle(demo_bundle))
    plan = SimpleNamespace(width=512, height=512, batch_size=1, hires=None, img2img=None)
    bigger = SimpleNamespace(width=512, height=512, batch_size=3, hires=SimpleNamespace(width=1024, height=1024),
                             img2img=None)
    assert estimate(bigger, profile) > estimate(plan, profile)


@pytest.mark.parametrize(("text", "expected"), [("12G", 12 * GiB), ("512MiB", 512 * MiB), ("1.5g", int(1.5 * GiB)),
                                                ("1000", 1000)])
def test_cli_memory_budget(text, expected):
    assert parse_budget(text) == expected
    args = build_parser().parse_args(["serve", "--memory-budget", text])
    assert args.memory_budget == expected


@pytest.mark.parametrize("text", ["0", "-1G", "lots"])
def test_cli_memory_budget_rejects_nonsense(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--memory-budget", text])


def measure(bundle: Path, size: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory_child", "--bundle", str(bundle), "--size",
                           str(size), "--steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", [256, 512])  # ~3 s and ~7 s
@pytest.mark.slow
def test_estimate_within_factor_of_measured(shapes_bundle, size):
    """A fresh server process's peak RSS over its loaded RSS for one image, against the estimate: the estimate
    is never below the measurement and at most 3× above it (measured 2.4× at 256 px, 1.6× at 512 px: it is
    conservative at small sizes, where one attention block and fixed costs dominate)."""
    result = measure(shapes_bundle, size)
    assert result["status"] == 200
    measured = (result["peak_rss_mib"] - result["loaded_rss_mib"]) * MiB
    profile = ModelProfile.of_bundle(load_bundle(shapes_bundle))
    predicted = estimate_job_bytes(profile, JobSize(size, size), 128 * 128 * 64, 1024 * 1024)
    assert measured <= predicted <= 3 * measured, (measured / MiB, predicted / MiB)


def test_worker_waits_for_free_memory_then_runs(monkeypatch):
    """A job within the budget but above what the machine has free now waits (polling), it is not refused."""
    import service.runtime.admission as admission

    free = iter([1 * GiB, 1 * GiB, 3 * GiB])
    monkeypatch.setattr(admission, "_POLL_S", 0.01)
    monkeypatch.setattr(admission, "meminfo_bytes", lambda name: next(free))
    assert admission.wait_for_memory(2 * GiB, timeout=5) is True
    monkeypatch.setattr(admission, "meminfo_bytes", lambda name: 1 * GiB)
    assert admission.wait_for_memory(2 * GiB, timeout=0.05) is False  # gives up waiting and runs it anyway

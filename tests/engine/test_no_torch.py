"""engine/ loads and runs a bundle in a process where torch, the HF libraries, export and service cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "torchvision", "diffusers", "transformers", "optimum", "onnx", "accelerate", "export", "service")

# Runs in a fresh interpreter: the import blocker goes in before anything from the project is imported.
SCRIPT = r"""
import importlib
import importlib.abc
import json
import pkgutil
import sys

BLOCKED = set(sys.argv[2].split(","))


class BlockImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"import of {name!r} is blocked in this test")
        return None


sys.meta_path.insert(0, BlockImports())
report = {"blocked_ok": []}
for name in sorted(BLOCKED):
    try:
        importlib.import_module(name)
    except ImportError:
        report["blocked_ok"].append(name)

import engine  # noqa: E402

report["engine_modules"] = []
for info in pkgutil.walk_packages(engine.__path__, "engine."):
    importlib.import_module(info.name)
    report["engine_modules"].append(info.name)

from engine.pipeline import Pipeline  # noqa: E402
from engine.plan import GenerationPlan  # noqa: E402

pipeline = Pipeline.from_path(sys.argv[1], "cpu")
steps = 3
plan = GenerationPlan(
    prompts=("a red circle", "a red circle"), negative_prompts=("blurry", "blurry"), seeds=(1, 2),
    subseeds=(1, 2), width=64, height=48, steps=steps, cfg_scale=7.0, sampler="Euler a",
    scheduler="automatic", batch_size=2,
)
result = pipeline.txt2img(plan)
report["sizes"] = [list(image.size) for image in result.images]
report["distinct"] = result.images[0].tobytes() != result.images[1].tobytes()
report["leaked"] = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps(report))
"""


@pytest.mark.parametrize("bundle_fixture", ["demo_bundle", "optimum_bundle"])
@pytest.mark.slow
def test_engine_runs_without_torch(request, bundle_fixture):
    bundle: Path = request.getfixturevalue(bundle_fixture)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), ",".join(BLOCKED)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The blocker really works: every blocked name fails to import in the child ...
    assert sorted(report["blocked_ok"]) == sorted(BLOCKED)
    # ... and yet every engine module imports and a bundle generates images.
    assert {"engine.pipeline", "engine.backend", "engine.samplers", "engine.denoiser"} <= set(report["engine_modules"])
    assert report["sizes"] == [[64, 48], [64, 48]]
    assert report["distinct"]
    assert report["leaked"] == []

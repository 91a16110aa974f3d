"""Shared fixtures: the demo model as a diffusers folder and as an exported sdedge bundle.

Both are built once and cached under .cache/ keyed by the export code and configs, so repeated test runs
do not re-export; a change to the exporter or the configs builds a fresh copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test-bundles"


def _cache_key() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "export").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".json"}:
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update((ROOT / "engine" / "bundle.py").read_bytes())
    return digest.hexdigest()[:16]


def _build(kind: str, builder) -> Path:
    target = CACHE / _cache_key() / kind
    if not (target / ".complete").exists():
        tmp = target.with_name(f"{kind}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        builder(tmp)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def demo_diffusers_dir() -> Path:
    """The demo model saved as a diffusers folder (random weights from the configs in export/configs)."""
    from export.demo import save_demo_pipeline

    return _build("diffusers", save_demo_pipeline)


@pytest.fixture(scope="session")
def demo_bundle(demo_diffusers_dir: Path) -> Path:
    """The demo model exported by export/ to an sdedge bundle (the same path a real checkpoint takes)."""
    from export.onnx_export import export_diffusers_folder

    return _build("bundle", lambda out: export_diffusers_folder(demo_diffusers_dir, out, name="sdedge-tiny"))


@pytest.fixture(scope="session")
def demo_pipeline(demo_bundle: Path):
    """The engine pipeline on the demo bundle, ONNX Runtime CPU."""
    from engine.pipeline import Pipeline

    return Pipeline.from_path(demo_bundle, "cpu")


@pytest.fixture(scope="session")
def torch_pipeline(demo_diffusers_dir: Path):
    """diffusers' StableDiffusionPipeline on the same weights: the independent reference."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(2)
    return StableDiffusionPipeline.from_pretrained(
        demo_diffusers_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )

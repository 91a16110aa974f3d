"""Built artefacts (demo folders, bundles) cached under .cache/, keyed by the export code that made them."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bumped when bundles must be rebuilt for a reason the hashed files below do not show.
# 2: attention chunked over queries (export/attention_chunking.py), recorded in the manifest's io entries.
# 3: each component's weights in one model.onnx_data beside model.onnx (export/onnx_layout.py).
BUILD_VERSION = 3


def export_code_key() -> str:
    """Changes whenever the exporter, the configs or the manifest type change, so stale builds are not reused."""
    digest = hashlib.sha256(f"build-{BUILD_VERSION}".encode())
    for path in sorted((ROOT / "export").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".json"}:
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update((ROOT / "engine" / "bundle.py").read_bytes())
    return digest.hexdigest()[:16]


def build_once(target: Path, builder: Callable[[Path], object]) -> Path:
    """Build into a temporary sibling and rename it into place; a finished build is marked `.complete`."""
    if not (target / ".complete").exists():
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        builder(tmp)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return target

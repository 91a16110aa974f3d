"""The OpenVINO backend does not keep its weight files resident beside the compiled weights (engine/mapped_pages.py)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import load_bundle

ov = pytest.importorskip("openvino")

from engine.openvino_backend import IR_DIR, OpenVinoBackend, cpu_supports_bf16  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps")


def mapped_rss(folder: Path) -> int:
    """Resident bytes of this process's file mappings under `folder` (read from /proc/self/smaps)."""
    total, inside, prefix = 0, False, str(folder.resolve()) + "/"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
            inside = len(fields) == 6 and fields[5].startswith(prefix)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def unet_feeds(bundle, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    return {"sample": rng.standard_normal((2, 4, size // 8, size // 8), dtype=np.float32),
            "timestep": np.full((2,), 500.0, np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, bundle.manifest.text_hidden_size), dtype=np.float32)}


def bundle_copy(shapes_bundle: Path, tmp_path: Path):
    """The shapes bundle by symlinks, so the f16 IR is written into the test's folder, not the shared bundle."""
    copy = tmp_path / "bundle"
    copy.mkdir()
    for item in shapes_bundle.iterdir():
        if not item.name.startswith("."):
            (copy / item.name).symlink_to(item)
    return load_bundle(copy)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weight_files_are_not_resident_after_compile_and_runs_are_unchanged(shapes_bundle, tmp_path, precision):
    if precision == "bf16" and not cpu_supports_bf16():
        pytest.skip("CPU without native bf16")
    # mapped_rss counts the whole process: garbage of earlier tests in this process (e.g. LoRA merges' memory-mapped
    # base weights in reference cycles) may still map the same files.
    gc.collect()
    bundle = bundle_copy(shapes_bundle, tmp_path)
    backend = OpenVinoBackend(bundle, precision, threads=2)
    feeds = unet_feeds(bundle, 64)
    first = backend.run("unet", feeds)["out_sample"]
    folder = (bundle.path / IR_DIR / "unet") if precision == "bf16" else shapes_bundle / "unet"
    weights = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".bin", ".onnx_data"))
    assert weights > 2**20
    # Without the drop the whole file stays resident (the compile read every weight).
    assert mapped_rss(folder) < 0.1 * weights
    second = backend.run("unet", feeds)["out_sample"]
    np.testing.assert_array_equal(first, second)
    assert mapped_rss(folder) < 0.1 * weights  # the compiled model does not read them back

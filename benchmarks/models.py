"""The benchmark's models, built once and cached in .cache/bench/: the demo model as a diffusers folder, our
sdedge bundle of it, and optimum-cli's export of it. Building needs torch, so it runs in a child process and
the benchmark process imports torch only when it measures the torch pipelines."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from export.build_cache import build_once, export_code_key

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"


@dataclass(frozen=True)
class BenchModels:
    diffusers: Path
    bundle: Path
    optimum: Path
    shapes: Path  # the default model (trained shapes), for the memory table

    def complete(self) -> bool:
        return all((p / ".complete").exists() for p in (self.diffusers, self.bundle, self.optimum, self.shapes))


def bench_models() -> BenchModels:
    base = CACHE / export_code_key()
    return BenchModels(base / "diffusers", base / "bundle", base / "optimum", base / "shapes")


def _build(target: Path, builder) -> None:
    build_once(target, builder)


def _optimum_export(source: Path, out: Path) -> None:
    cli = Path(sys.executable).with_name("optimum-cli")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "optimum.commands.optimum_cli"]
    command += ["export", "onnx", "--model", str(source), "--task", "text-to-image", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"optimum-cli export failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def build(models: BenchModels) -> None:
    from export.demo import save_demo_pipeline
    from export.onnx_export import export_diffusers_folder

    models.diffusers.parent.mkdir(parents=True, exist_ok=True)
    _build(models.diffusers, save_demo_pipeline)
    _build(models.bundle, lambda out: export_diffusers_folder(models.diffusers, out, name="sdedge-tiny"))
    _build(models.optimum, lambda out: _optimum_export(models.diffusers, out))
    from export.onnx_export import export_pipeline
    from export.shapes import build_shapes_pipeline

    _build(models.shapes, lambda out: export_pipeline(build_shapes_pipeline(), out, name="sdedge-shapes"))


def ensure_models() -> BenchModels:
    """The cached models, building missing ones in a child process (keeps torch out of this one)."""
    models = bench_models()
    if not models.complete():
        subprocess.run([sys.executable, "-m", "benchmarks.models"], cwd=ROOT, check=True)
    return models


if __name__ == "__main__":
    build(bench_models())

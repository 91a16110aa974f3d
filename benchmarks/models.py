"""The benchmark's models, built once and cached in .cache/bench/: the demo model as a diffusers folder, our
sdedge bundle of it, and optimum-cli's export of it. Building needs torch, so it runs in a child process and
the benchmark process imports torch only when it measures the torch pipelines."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"


@dataclass(frozen=True)
class BenchModels:
    diffusers: Path
    bundle: Path
    optimum: Path

    def complete(self) -> bool:
        return all((p / ".complete").exists() for p in (self.diffusers, self.bundle, self.optimum))


def _cache_key() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "export").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".json"}:
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update((ROOT / "engine" / "bundle.py").read_bytes())
    return digest.hexdigest()[:16]


def bench_models() -> BenchModels:
    base = CACHE / _cache_key()
    return BenchModels(base / "diffusers", base / "bundle", base / "optimum")


def _build(target: Path, builder) -> None:
    if (target / ".complete").exists():
        return
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    builder(tmp)
    (tmp / ".complete").write_text("ok")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


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


def ensure_models() -> BenchModels:
    """The cached models, building missing ones in a child process (keeps torch out of this one)."""
    models = bench_models()
    if not models.complete():
        subprocess.run([sys.executable, "-m", "benchmarks.models"], cwd=ROOT, check=True)
    return models


if __name__ == "__main__":
    build(bench_models())

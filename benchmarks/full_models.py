"""The full-size benchmark's models: SD 1.5's official architecture (export/configs/sd15) and SD 2.1's
(export/configs/sd2-base: 512 px, epsilon) with seeded random weights, each as a diffusers folder (for the torch
runs) and as our bundle, built once and cached in .cache/bench-full/. Building needs torch and ~10 GiB, so it runs
in a child process under the full-size lock."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from export.build_cache import build_once, export_code_key

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench-full"
SEED = 0


@dataclass(frozen=True)
class FullModels:
    diffusers: Path
    bundle: Path

    def complete(self) -> bool:
        return all((p / ".complete").exists() for p in (self.diffusers, self.bundle))


ARCHES = ("sd15", "sd21")


def full_models(arch: str = "sd15") -> FullModels:
    base = CACHE / export_code_key()
    if arch != "sd15":  # SD 1.5 keeps the layout its cached models were built in
        base = base / arch
    return FullModels(base / "diffusers", base / "bundle")


def _save_diffusers(out: Path) -> None:
    """export/demo.py's recipe on the SD 1.5 configs, seeded with SEED."""
    from export.demo import build_demo_pipeline
    from export.single_file import SD15_CONFIG_DIR

    build_demo_pipeline(SEED, SD15_CONFIG_DIR).save_pretrained(out, safe_serialization=True)


def _save_diffusers_sd21(out: Path) -> None:
    """tests/export/test_fullsize_families.py's recipe: SD 2.1's configs (OpenCLIP-H text encoder as diffusers
    ships it, its tokenizer padding with "!" = id 0) with seeded random weights."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from export.detect import CONFIG_ROOT
    from export.single_file import write_config_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(Path(tmp) / "configs", CONFIG_ROOT / "sd2-base", family="sd2")
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        torch.manual_seed(SEED + 1)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        torch.manual_seed(SEED + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        pipe = StableDiffusionPipeline(
            unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            scheduler=PNDMScheduler.from_pretrained(folder, subfolder="scheduler"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


SAVERS = {"sd15": _save_diffusers, "sd21": _save_diffusers_sd21}


def build(models: FullModels, arch: str = "sd15") -> None:
    from export.onnx_export import export_diffusers_folder

    models.diffusers.parent.mkdir(parents=True, exist_ok=True)
    build_once(models.diffusers, SAVERS[arch])
    build_once(models.bundle, lambda out: export_diffusers_folder(models.diffusers, out, name=f"{arch}-random"))


def ensure_full_models(arch: str = "sd15") -> FullModels:
    """The cached models, building missing ones in a child process (keeps torch out of this one)."""
    models = full_models(arch)
    if not models.complete():
        subprocess.run([sys.executable, "-m", "benchmarks.full_models", arch], cwd=ROOT, check=True)
    return models


if __name__ == "__main__":
    arch = sys.argv[1] if len(sys.argv) > 1 else "sd15"
    models = full_models(arch)
    build(models, arch)
    print(models.bundle)

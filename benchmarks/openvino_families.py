"""OpenVINO bf16's quality gate per model family (SD 2.x v-prediction, SDXL base, SDXL refiner), with and without
the f32 timestep/time_ids path (engine/openvino_precision.py).

    nice -n 19 .venv/bin/python -m benchmarks.openvino_families DIR [--samples 4 --size 128 --steps 6]

DIR receives reduced-width random models of each family (the builders of tests/engine/test_openvino_families.py;
torch and diffusers: benchmark code only) unless it already holds them. Prints one JSON line per (family, marks):
engine/quality_gate.py's result (per-UNet-call cosine vs ONNX Runtime fp32, image PSNR). Numbers in
benchmarks/RESULTS.md, "OpenVINO bf16 on SD 2.x and SDXL".
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

FAMILIES = ("sd2v", "sdxl", "refiner")


def build(root: Path) -> dict[str, Path]:
    """family → bundle path, exported once into `root`."""
    from export.onnx_export import export_diffusers_folder, export_pipeline
    from export.sdxl_demo import build_tiny_sdxl_pipeline
    from tests.export.family_models import reduced_config_set, save_sd2_folder

    paths = {name: root / name for name in FAMILIES}
    if not (paths["sd2v"] / "manifest.json").is_file():
        configs = reduced_config_set(root / "configs")
        export_diffusers_folder(save_sd2_folder(configs.sd2_v, root / "sd2v-folder", v_prediction=True, seed=3),
                                paths["sd2v"])
    if not (paths["sdxl"] / "manifest.json").is_file():
        export_pipeline(build_tiny_sdxl_pipeline(seed=0), paths["sdxl"], name="tiny-sdxl")
    if not (paths["refiner"] / "manifest.json").is_file():
        export_pipeline(build_tiny_sdxl_pipeline(seed=5, refiner=True), paths["refiner"], name="tiny-refiner")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import engine.openvino_backend as ovb
    from engine.backend import BackendChoice
    from engine.bundle import load_bundle
    from engine.quality_gate import run_gate

    paths = build(args.dir)
    keep = ovb.keep_timestep_f32
    for marks in (True, False):
        ovb.keep_timestep_f32 = keep if marks else (lambda model: 0)  # what the backend calls before compiling
        for family, path in paths.items():
            bundle = load_bundle(path)
            start = time.time()
            # f16_weights=False: compiled from the ONNX, so the unmarked run has no f32-kept IR constants either
            backend = ovb.OpenVinoBackend(bundle, "bf16", threads=args.threads, f16_weights=False)
            result = run_gate(bundle, BackendChoice("openvino", "bf16", args.threads), samples=args.samples,
                              size=args.size, steps=args.steps, threads=args.threads, variant_backend=backend,
                              name="openvino-bf16")
            print(json.dumps({"family": family, "time_path_f32": marks, **asdict(result),
                              "seconds": round(time.time() - start)}), flush=True)
    ovb.keep_timestep_f32 = keep


if __name__ == "__main__":
    main()

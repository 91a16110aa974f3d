"""`python -m export demo|shapes|shapes-inpaint|convert|variant|detect`: build bundles from the command line."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the demo model and export it to a bundle")
    demo.add_argument("--out", type=Path, required=True)
    shapes = sub.add_parser("shapes", help="export the trained shapes model (export/weights/shapes-sd)")
    shapes.add_argument("--out", type=Path, required=True)
    shapes_inpaint = sub.add_parser("shapes-inpaint",
                                    help="export the trained inpainting variant (export/weights/shapes-sd-inpaint)")
    shapes_inpaint.add_argument("--out", type=Path, required=True)
    convert = sub.add_parser("convert", help="export a diffusers folder or an A1111 .safetensors/.ckpt checkpoint "
                             "(SD 1.x, SD 2.x, SD-Turbo, SDXL, SDXL refiner/inpainting/Turbo) to a bundle")
    convert.add_argument("source", type=Path)
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--name", default=None)
    variant = sub.add_parser("variant", help="build a derived graph of a bundle (fp16, ORT CUDA, TensorRT-ready), "
                             "gate it against the portable fp32 graphs and record it in the manifest")
    variant.add_argument("bundle", type=Path)
    kinds = variant.add_mutually_exclusive_group(required=True)
    kinds.add_argument("--fp16", dest="kind", action="store_const", const="fp16")
    kinds.add_argument("--ort-cuda", dest="kind", action="store_const", const="ort-cuda")
    kinds.add_argument("--trt-ready", dest="kind", action="store_const", const="trt-ready")
    variant.add_argument("--gate-only", action="store_true", help="re-run the gate on the variant's files")
    variant.add_argument("--no-gate", action="store_true")
    variant.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="where the variant is gated")
    variant.add_argument("--samples", type=int, default=8)
    variant.add_argument("--size", type=int, default=256)
    variant.add_argument("--steps", type=int, default=4)
    detect = sub.add_parser("detect", help="print the model family of a checkpoint file or diffusers folder")
    detect.add_argument("source", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "detect":
        return _detect(args.source)
    if args.command == "variant":
        return _variant(args)

    from export.onnx_export import export_diffusers_folder

    if args.command == "demo":
        from export.demo import save_demo_pipeline

        with tempfile.TemporaryDirectory() as tmp:
            folder = save_demo_pipeline(Path(tmp) / "sdedge-tiny")
            export_diffusers_folder(folder, args.out, name="sdedge-tiny")
    elif args.command == "shapes":
        from export.shapes import save_shapes_pipeline

        with tempfile.TemporaryDirectory() as tmp:
            folder = save_shapes_pipeline(Path(tmp) / "sdedge-shapes")
            export_diffusers_folder(folder, args.out, name="sdedge-shapes")
    elif args.command == "shapes-inpaint":
        from export.shapes import save_shapes_inpaint_pipeline

        with tempfile.TemporaryDirectory() as tmp:
            folder = save_shapes_inpaint_pipeline(Path(tmp) / "sdedge-shapes-inpaint")
            export_diffusers_folder(folder, args.out, name="sdedge-shapes-inpaint")
    elif args.source.is_file():
        from export.single_file import SingleFileError, export_single_file

        try:
            export_single_file(args.source, args.out, name=args.name)
        except SingleFileError as exc:
            raise SystemExit(f"{args.source}: {exc}") from exc
    else:
        export_diffusers_folder(args.source, args.out, name=args.name)
    logging.info("bundle written to %s", args.out)
    return 0


def _variant(args) -> int:
    import json

    from export.variants.build import build_variant, gate_variant

    options = {"provider": args.provider, "samples": args.samples, "size": args.size, "steps": args.steps}
    if args.gate_only:
        record = gate_variant(args.bundle, args.kind, **options)
    else:
        record = build_variant(args.bundle, args.kind, gate=not args.no_gate, **options)
    print(json.dumps(record["gate"], indent=2))
    return 0 if record["gate"].get("passed") is not False else 1


def _detect(source: Path) -> int:
    import json
    from dataclasses import asdict

    from export.detect import SingleFileError, detect_diffusers_folder
    from export.single_file import detect_single_file

    try:
        found = detect_single_file(source) if source.is_file() else detect_diffusers_folder(source)
    except SingleFileError as exc:
        raise SystemExit(f"{source}: {exc}") from exc
    print(json.dumps({**asdict(found), "config_dir": str(found.config_dir)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The fp16 variant's gate on full-size SD 1.5 (random weights, benchmarks/full_models.py's cached bundle).

    .venv/bin/python -m benchmarks.variant_gate [BUNDLE] --build-only          # peak < 3 GiB
    flock /tmp/team/fullsize.lock .venv/bin/python -m benchmarks.variant_gate [BUNDLE] --gate-only [--samples 2]

The variant is built in a copy of the bundle under .cache/variant-gate/ (the cached bundle is left as it is), gated, and its record printed; numbers go to docs/gpu.md.
The gate holds the fp32 and the fp16 sessions side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "variant-gate"


def working_copy(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` (4.4 GB for SD 1.5). Not hard links: onnx refuses to load external data from a file
    with several links ("potential hardlink attack")."""
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("variants", ".openvino*", ".complete"))
        (out / ".complete").write_text("ok")
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--kind", default="fp16")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    # The build alone peaks under 3 GiB (weights converted one at a time); the gate holds fp32 and fp16 sessions.
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--gate-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle = args.bundle
    if bundle is None:
        from benchmarks.full_models import ensure_full_models

        bundle = ensure_full_models("sd15").bundle
    work = working_copy(Path(bundle), WORK / f"{Path(bundle).parent.name}-{args.kind}")
    from export.variants.build import build_variant, gate_variant

    start = time.perf_counter()
    options = {"samples": args.samples, "size": args.size, "steps": args.steps}
    if args.gate_only:
        record = gate_variant(work, args.kind, **options)
    else:
        record = build_variant(work, args.kind, gate=not args.build_only, **options)
    record["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

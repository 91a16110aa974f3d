"""Generate the Python gRPC stubs of proto/ into service/generated/ (`make proto`); same inputs, same bytes.

protoc writes `sdedge/v1/sdedge_pb2.py` and a `_grpc.py` that imports it as `sdedge.v1`; we flatten both
into the `service.generated` package and make that import relative, so the stubs import from anywhere.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = ["sdedge/v1/sdedge.proto", "sdedge/v1/metrics.proto"]
DEFAULT_OUT = ROOT / "service" / "generated"
INIT = '"""Stubs generated from proto/ by `make proto` (proto/generate.py). Do not edit."""\n'


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
                f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for proto in PROTOS:
            package = Path(proto).parent
            module = Path(proto).stem
            dotted = ".".join(package.parts)
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                text = (Path(tmp) / package / f"{module}{suffix}").read_text(encoding="utf-8")
                text = text.replace(f"from {dotted} import {module}_pb2", f"from . import {module}_pb2")
                text = text.replace(f"'{dotted}.{module}_pb2'", "__name__")  # the classes' __module__
                target = out / f"{module}{suffix}"
                target.write_text(text, encoding="utf-8")
                written.append(target)
    (out / "__init__.py").write_text(INIT, encoding="utf-8")
    return [out / "__init__.py", *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.out.exists() and args.out == DEFAULT_OUT:
        shutil.rmtree(args.out)
    for path in generate(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The service's layers: A1111 semantics (service/a1111/) and the runtime (service/runtime/) import no web
framework and no gRPC, so either door (service/http/, service/rpc/) can be read, replaced or dropped alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("service/a1111", "service/runtime")
FORBIDDEN = ("fastapi", "starlette", "uvicorn", "grpc", "grpc_health", "grpc_reflection", "service.http",
             "service.rpc", "service.cli", "service.generated")


def imported_modules(source: str) -> list[str]:
    """Every module an `import` or `from … import` names, anywhere in the file (inside functions too)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            # `from service import http` names the package service.http
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def layer_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_the_layers_exist():
    names = {p.relative_to(ROOT).as_posix() for p in layer_files()}
    assert {"service/a1111/translate.py", "service/a1111/errors.py", "service/runtime/jobs.py",
            "service/runtime/generate.py"} <= names


@pytest.mark.parametrize("path", layer_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_web_framework_or_grpc_import(path):
    bad = [m for m in imported_modules(path.read_text()) if forbidden(m)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("source, found", [
    ("import grpc", True),
    ("def f():\n    from starlette.exceptions import HTTPException", True),
    ("from fastapi.responses import JSONResponse", True),
    ("import uvicorn as u", True),
    ("class A:\n    def f(self):\n        import grpc_health.v1", True),
    ("from service import http", True),
    ("from service.rpc.server import status_for", True),
    ("import grpcio_like_name", False),
    ("from service.a1111 import translate", False),
    ("import numpy", False),
])
def test_the_check_sees_every_kind_of_import(source, found):
    assert any(forbidden(m) for m in imported_modules(source)) is found

"""--backend / --precision reach the backend the model registry creates."""

from __future__ import annotations

import pytest

from engine.backend import BackendChoice, OrtBackend
from service.cli.commands import build_parser
from service.runtime.models import ModelRegistry
from service.runtime.state import ServerConfig, ServerState


def test_serve_flags_parse_and_default_to_auto():
    args = build_parser().parse_args(["serve"])
    assert (args.backend, args.precision) == ("auto", "fp32")
    assert ServerConfig().backend == "auto"
    args = build_parser().parse_args(["serve", "--backend", "openvino", "--precision", "bf16"])
    assert (args.backend, args.precision) == ("openvino", "bf16")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--precision", "fp8"])


def test_registry_loads_on_the_chosen_backend(shapes_bundle):
    registry = ModelRegistry(None, [shapes_bundle])
    assert isinstance(registry.load(registry.entries()[0]).backend, OrtBackend)
    pytest.importorskip("openvino")
    from engine.openvino_backend import OpenVinoBackend

    registry = ModelRegistry(None, [shapes_bundle], "cpu", BackendChoice("openvino", "fp32"))
    backend = registry.load(registry.entries()[0]).backend
    assert isinstance(backend, OpenVinoBackend) and backend.precision == "fp32"


def test_server_config_choice_reaches_the_registry(shapes_bundle, tmp_path):
    state = ServerState(ServerConfig(model=shapes_bundle, models_dir=tmp_path, options_file=tmp_path / "o.json",
                                     backend="auto"))
    assert state.models.choice == BackendChoice("auto", "fp32")
    with pytest.raises(ValueError, match="openvino"):
        ServerState(ServerConfig(model=shapes_bundle, models_dir=tmp_path, options_file=tmp_path / "o.json",
                                 backend="ort", precision="bf16"))


def test_the_default_server_serves_the_gated_variant(bundle_copy, tmp_path):
    """`sdedge serve` without --backend: the bundle's fastest passing variant (here a recorded OpenVINO fp32 gate)."""
    pytest.importorskip("openvino")
    from engine.openvino_backend import OpenVinoBackend
    from engine.quality_gate import GateResult, record

    config = ServerConfig(model=bundle_copy, models_dir=tmp_path, options_file=tmp_path / "o.json")
    state = ServerState(config)
    assert isinstance(state.models.load(state.models.entries()[0]).backend, OrtBackend)  # nothing recorded yet
    record(bundle_copy, GateResult("openvino-fp32", "ort-fp32", True, 0.9999, 0.99995, (40.0,), 1, 64, 2, 0.5, 1.0))
    state = ServerState(config)
    assert isinstance(state.models.load(state.models.entries()[0]).backend, OpenVinoBackend)

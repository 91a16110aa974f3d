"""Shared fixtures: the demo model as a diffusers folder and as an exported sdedge bundle.

Both are built once and cached under .cache/ keyed by the export code and configs, so repeated test runs
do not re-export; a change to the exporter or the configs builds a fresh copy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

from export.build_cache import build_once, export_code_key

ROOT = Path(__file__).resolve().parent.parent

# `make test` draws the same examples every run, so a red CI run is the code's doing, not the dice's; `make fuzz`
# (SDEDGE_HYPOTHESIS=explore) draws new ones each time.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("SDEDGE_HYPOTHESIS", "ci"))
CACHE = ROOT / ".cache" / "test-bundles"


def _build(kind: str, builder) -> Path:
    return build_once(CACHE / export_code_key() / kind, builder)


@pytest.fixture(scope="session")
def demo_diffusers_dir() -> Path:
    """The demo model saved as a diffusers folder (random weights from the configs in export/configs)."""
    from export.demo import save_demo_pipeline

    return _build("diffusers", save_demo_pipeline)


@pytest.fixture(scope="session")
def demo_bundle(demo_diffusers_dir: Path) -> Path:
    """The demo model exported by export/ to an sdedge bundle (the same path a real checkpoint takes)."""
    from export.onnx_export import export_diffusers_folder

    return _build("bundle", lambda out: export_diffusers_folder(demo_diffusers_dir, out, name="sdedge-tiny"))


@pytest.fixture(scope="session")
def optimum_bundle(demo_diffusers_dir: Path) -> Path:
    """The demo model exported by `optimum-cli export onnx` (scalar timestep, no manifest), used unchanged."""

    def export(out: Path) -> None:
        cli = Path(sys.executable).with_name("optimum-cli")
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "optimum.commands.optimum_cli"]
        command += ["export", "onnx", "--model", str(demo_diffusers_dir), "--task", "text-to-image", str(out)]
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"optimum-cli export failed ({proc.returncode}):\n{proc.stderr[-4000:]}")

    return _build("optimum", export)


@pytest.fixture(scope="session")
def shapes_bundle() -> Path:
    """The trained shapes model (export/weights/shapes-sd) exported to a bundle; keyed by its weights too."""
    from export.onnx_export import export_pipeline
    from export.shapes import WEIGHTS_DIR, build_shapes_pipeline

    # SDEDGE_SHAPES_WEIGHTS points at another weights folder (a checkpoint of a running training).
    source = Path(os.environ.get("SDEDGE_SHAPES_WEIGHTS", WEIGHTS_DIR))
    weights = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(source.glob("*.safetensors"))))
    kind = f"shapes-{weights.hexdigest()[:12]}"
    return _build(kind, lambda out: export_pipeline(build_shapes_pipeline(source), out, name="sdedge-shapes"))


@pytest.fixture
def bundle_copy(shapes_bundle: Path, tmp_path: Path) -> Path:
    """The shapes bundle with its own manifest (a quality gate can be recorded into it); weights symlinked."""
    import shutil

    out = tmp_path / "bundle"
    out.mkdir()
    for item in shapes_bundle.iterdir():
        if item.name == "manifest.json":
            shutil.copy(item, out / item.name)
        else:
            (out / item.name).symlink_to(item)
    return out


@pytest.fixture(scope="session")
def shapes_inpaint_bundle(tmp_path_factory) -> Path:
    """The trained inpainting variant (export/weights/shapes-sd-inpaint) exported to a bundle; keyed by its UNet."""
    from export.onnx_export import export_diffusers_folder
    from export.shapes import INPAINT_WEIGHTS_DIR, save_shapes_inpaint_pipeline

    # SDEDGE_SHAPES_INPAINT_WEIGHTS points at another weights folder (a checkpoint of a running training).
    source = Path(os.environ.get("SDEDGE_SHAPES_INPAINT_WEIGHTS", INPAINT_WEIGHTS_DIR))
    weights = hashlib.sha256((source / "unet.safetensors").read_bytes())

    def build(out: Path) -> None:
        folder = save_shapes_inpaint_pipeline(tmp_path_factory.mktemp("shapes-inpaint") / "diffusers", source)
        export_diffusers_folder(folder, out, name="sdedge-shapes-inpaint")

    return _build(f"shapes-inpaint-{weights.hexdigest()[:12]}", build)


@pytest.fixture(scope="session")
def demo_inpaint_diffusers_dir() -> Path:
    """The demo architecture with a 9-channel (inpainting) UNet, as a diffusers folder."""
    from export.demo import save_demo_inpaint_pipeline

    return _build("inpaint-diffusers", save_demo_inpaint_pipeline)


@pytest.fixture(scope="session")
def demo_inpaint_bundle(demo_inpaint_diffusers_dir: Path) -> Path:
    """The inpainting demo model exported to an sdedge bundle."""
    from export.onnx_export import export_diffusers_folder

    return _build("inpaint-bundle",
                  lambda out: export_diffusers_folder(demo_inpaint_diffusers_dir, out, name="sdedge-tiny-inpaint"))


@pytest.fixture(scope="session")
def demo_pipeline(demo_bundle: Path):
    """The engine pipeline on the demo bundle, ONNX Runtime CPU."""
    from engine.pipeline import Pipeline

    return Pipeline.from_path(demo_bundle, "cpu")


@pytest.fixture(scope="session")
def torch_pipeline(demo_diffusers_dir: Path):
    """diffusers' StableDiffusionPipeline on the same weights: the independent reference."""
    import torch
    from diffusers import StableDiffusionPipeline

    # One thread: on the shared 2-core machines two spinning OpenMP threads run ~10x slower under load.
    torch.set_num_threads(1)
    return StableDiffusionPipeline.from_pretrained(
        demo_diffusers_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture
def brownian_spans(monkeypatch) -> list[tuple[float, float]]:
    """The [min positive σ, max σ] each Brownian noise sampler the pipeline builds is given, in order."""
    import engine.pipeline as pipeline_module

    spans: list[tuple[float, float]] = []
    real = pipeline_module.brownian_noise_sampler

    def recording(x_shape, sigmas, *args, **kwargs):
        s = np.asarray(sigmas, dtype=np.float32)
        spans.append((float(s[s > 0].min()), float(s.max())))
        return real(x_shape, sigmas, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "brownian_noise_sampler", recording)
    return spans


@pytest.fixture(scope="session")
def inpaint_pipeline(demo_inpaint_bundle):
    """The demo inpainting bundle (9-channel UNet) on ORT CPU."""
    from engine.pipeline import Pipeline

    return Pipeline.from_path(demo_inpaint_bundle, "cpu")


@pytest.fixture(scope="session")
def inpaint_torch(demo_inpaint_diffusers_dir):
    """diffusers' StableDiffusionInpaintPipeline on the same weights: the reference."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    torch.set_num_threads(2)
    return StableDiffusionInpaintPipeline.from_pretrained(
        demo_inpaint_diffusers_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture(scope="module")
def grpc_in_process(demo_bundle, tmp_path_factory):
    """(state, stub, channel) of an in-process gRPC server on the demo model, so tests can hold the queue's
    worker with a job of their own."""
    import grpc

    from service.generated import sdedge_pb2_grpc as pb_grpc
    from service.rpc.server import GrpcConfig, GrpcServer
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp_path_factory.mktemp("models")))
    state.load_default()
    server = GrpcServer(state, GrpcConfig(port=0))
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield state, pb_grpc.SdEdgeStub(channel), channel
    channel.close()
    server.stop(grace=None)
    state.close()


@pytest.fixture(scope="module")
def api(demo_bundle, tmp_path_factory):
    """The sdapi app on the demo bundle through FastAPI's TestClient; a fresh server state per test module."""
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("api")
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json"))
    with TestClient(create_app(state)) as client:
        yield client
    state.close()

"""Where a built TensorRT engine lives, and whether it exists.

An engine is only valid for the GPU architecture, the TensorRT version and the graph it was built from, and for
its profile (NVIDIA's A1111 extension keys its engines by checkpoint hash, compute capability and profile;
TensorRT engines are not portable across architectures or TensorRT versions). The cache key holds all of them
plus the ONNX Runtime version (the TRT EP's own cache format and its graph partitioning change between releases)
and the GPU name (two boards of one architecture can differ in SM count and memory, which tactic timing sees).

The GPU facts are read in one place (`probe_gpu`: nvidia-smi for name and compute capability, libnvinfer for the
TensorRT version) so tests inject them; nothing here imports a GPU library at module load.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.trt_profiles import TrtBuildOptions, UNetProfile

ENGINE_RECORD = "sdedge-engine.json"  # written by `sdedge build-engines` after a finished build, never before


@dataclass(frozen=True)
class GpuFacts:
    """What an engine is tied to on this machine."""

    name: str  # "NVIDIA GeForce RTX 4090", "Orin (nvgpu)"
    compute_capability: str  # "8.9"
    tensorrt_version: str  # "10.9.0"


@dataclass(frozen=True)
class EngineKey:
    component: str
    gpu: GpuFacts
    ort_version: str
    model_hash: str  # model_fingerprint() of the graph the engine is built from
    variant: str  # the bundle variant the graph comes from ("trt-ready", or "portable")
    profile: UNetProfile
    build: TrtBuildOptions

    def digest(self) -> str:
        """sha256 over every part of the key, canonical JSON (the profile's ranges in input order)."""
        parts = {
            "component": self.component,
            "gpu": asdict(self.gpu),
            "ort": self.ort_version,
            "model": self.model_hash,
            "variant": self.variant,
            "profile": [[n, list(r.min), list(r.opt), list(r.max)] for n, r in self.profile.inputs],
            # CUDA graphs are a run-time choice of the same engine; everything else changes the built engine
            "build": {"fp16": self.build.fp16, "workspace": self.build.max_workspace_bytes,
                      "level": self.build.builder_optimization_level},
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def directory_name(self) -> str:
        """Readable where it can be (what a person listing the cache needs to tell engines apart), unique by
        the digest: `unet-static-512-sm89-trt10.9.0-<12 hex>`."""
        sm = self.gpu.compute_capability.replace(".", "")
        readable = f"{self.component}-{self.profile.name}-sm{sm}-trt{self.gpu.tensorrt_version}"
        return f"{_safe(readable)}-{self.digest()[:12]}"

    def record(self) -> dict:
        return {"component": self.component, "gpu": asdict(self.gpu), "ort_version": self.ort_version,
                "model_hash": self.model_hash, "variant": self.variant, "profile": self.profile.name,
                "digest": self.digest()}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text)


def model_fingerprint(model: Path) -> str:
    """The graph an engine is built from: sha256 of `model.onnx` (the graph and small constants) and the names
    and sizes of its external-data files. The weights' bytes are not read (3.4 GB for SD 1.5 on every start);
    a re-export with other weights changes the graph file's producer metadata or the bundle's source hash,
    which the caller adds."""
    digest = hashlib.sha256(model.read_bytes())
    for data in sorted(model.parent.glob("*.onnx_data")) + sorted(model.parent.glob("*.data")):
        digest.update(f"{data.name}:{data.stat().st_size}".encode())
    return digest.hexdigest()


def engine_dir(root: Path, key: EngineKey) -> Path:
    return Path(root) / key.directory_name()


def is_built(directory: Path) -> bool:
    """A finished build: the record `sdedge build-engines` writes last, and an engine file of ORT's TRT EP."""
    directory = Path(directory)
    return (directory / ENGINE_RECORD).is_file() and any(directory.glob("*.engine"))


def write_record(directory: Path, key: EngineKey, seconds: float) -> None:
    record = key.record() | {"build_seconds": round(seconds, 1)}
    (Path(directory) / ENGINE_RECORD).write_text(json.dumps(record, indent=1))


# --- reading the machine's GPU facts (only here) ---

GpuQuery = Callable[[], str]  # "name, major.minor" lines, as nvidia-smi's CSV query prints them
QUERY_ARGS = ["--query-gpu=name,compute_cap", "--format=csv,noheader"]
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 75, 76  # cuda.h


def _nvidia_smi() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise FileNotFoundError("nvidia-smi not found")
    return subprocess.run([smi, *QUERY_ARGS], capture_output=True, text=True, check=True, timeout=30).stdout


def _cuda_driver() -> str:
    """The same answer from the CUDA driver API (libcuda, installed with every driver; Jetson's nvidia-smi may not
    know --query-gpu)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    count, device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return ""
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    cuda.cuDeviceGetName(name, len(name), device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    return f"{name.value.decode(errors='replace')}, {major.value}.{minor.value}\n"


def query_gpu() -> str:
    """nvidia-smi's answer, else the CUDA driver's; "" when neither knows a GPU."""
    for query in (_nvidia_smi, _cuda_driver):
        try:
            text = query()
        except (OSError, subprocess.SubprocessError, AttributeError):
            continue
        if parse_gpu_query(text):
            return text
    return ""


def parse_gpu_query(text: str) -> tuple[str, str] | None:
    """The first GPU of `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`."""
    for line in text.splitlines():
        name, _, cc = line.rpartition(",")
        if name.strip() and re.fullmatch(r"\d+\.\d+", cc.strip()):
            return name.strip(), cc.strip()
    return None


def decode_trt_version(number: int) -> str:
    """`getInferLibVersion()`: major·1000 + minor·100 + patch up to TensorRT 9, major·10000 + minor·100 + patch
    from 10 on (NvInferVersion.h's NV_TENSORRT_VERSION)."""
    if number >= 100000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def tensorrt_version() -> str | None:
    """The TensorRT the TRT EP will load: the `tensorrt` Python package if installed, else libnvinfer itself."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        pass
    for lib in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        handle.getInferLibVersion.restype = ctypes.c_int32
        return decode_trt_version(int(handle.getInferLibVersion()))
    return None


def probe_gpu(query: GpuQuery | None = None, trt_version: Callable[[], str | None] | None = None
              ) -> GpuFacts | None:
    """This machine's first NVIDIA GPU, or None (no driver, no GPU, or no TensorRT)."""
    found = parse_gpu_query((query or query_gpu)())
    version = (trt_version or tensorrt_version)() if found else None
    if found is None or version is None:
        return None
    return GpuFacts(name=found[0], compute_capability=found[1], tensorrt_version=version)


def has_nvidia_gpu(query: GpuQuery | None = None) -> bool:
    """An NVIDIA GPU the driver sees (TensorRT or not)."""
    return parse_gpu_query((query or query_gpu)()) is not None

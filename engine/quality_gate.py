"""The quality gate of a reduced-precision (or other non-reference) backend variant, and the `auto` choice.

A variant (say OpenVINO bf16) is accepted for a bundle only with its measured error against the reference path
(ONNX Runtime fp32) on the same noise: every UNet call the reference makes during txt2img over several
prompts/seeds is replayed on the variant with the same inputs (per-call cosine similarity, gate ≥ 0.999), and
the whole txt2img is run on the variant too (image PSNR against the reference image, reported; random-weight
models amplify differences over the steps, so PSNR is reported rather than gated). The result, with each side's
median UNet call time, goes into the bundle's manifest (`quality_gate`), where `pick_variant` reads it:
`--backend auto` takes the fastest variant whose gate passed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engine.backend import BackendChoice, ExecutionBackend, TensorSpec, create_backend
from engine.bundle import MANIFEST_NAME, Bundle, load_bundle

MIN_COSINE = 0.999
REFERENCE = "ort-fp32"
PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red circle on a blue background",
    "portrait of an old man, oil painting, detailed",
    "a city street at night, neon lights, rain",
    "a bowl of fruit on a wooden table",
    "mountains above a lake at sunrise",
    "a cat sleeping on a sofa",
    "an isometric pixel-art castle",
)
NEGATIVE = "blurry, low quality"


def variant_name(choice: BackendChoice) -> str:
    return f"{choice.backend}-{choice.precision}"


class RecordingBackend:
    """Passes calls through and keeps the UNet's inputs/outputs and call times (the gate replays them)."""

    def __init__(self, inner: ExecutionBackend, keep: bool = True):
        self.inner = inner
        self.keep = keep
        self.calls: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        self.seconds: list[float] = []

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.inner.run(component, inputs)
        if component == "unet":
            self.seconds.append(time.perf_counter() - start)
            if self.keep:
                self.calls.append(({k: v.copy() for k, v in inputs.items()}, next(iter(out.values()))))
        return out

    def input_specs(self, component: str) -> list[TensorSpec]:
        return self.inner.input_specs(component)

    def output_names(self, component: str) -> list[str]:
        return self.inner.output_names(component)

    @property
    def providers(self) -> list[str]:
        return self.inner.providers


@dataclass(frozen=True)
class GateResult:
    variant: str
    reference: str
    passed: bool
    min_cosine: float  # over every UNet call of every sample
    mean_cosine: float
    psnr_db: tuple[float, ...]  # per sample, variant image vs reference image (8-bit)
    samples: int
    size: int
    steps: int
    unet_call_s: float  # median UNet call (CFG batch) of the variant at `size`
    reference_unet_call_s: float
    measured: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def psnr_min_db(self) -> float:
        return min(self.psnr_db)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.array_equal(a, b))


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_gate(bundle: Bundle, candidate: BackendChoice | None, samples: int = 8, size: int = 256, steps: int = 4,
             threads: int = 0, variant_backend: ExecutionBackend | None = None,
             name: str | None = None) -> GateResult:
    """`variant_backend` (named `name`) instead of `candidate`: a backend over other graphs of the same model
    (export/variants/: fp16, trt-ready), measured the same way."""
    from engine.pipeline import Pipeline
    from engine.plan import GenerationPlan

    reference = RecordingBackend(create_backend(bundle, "cpu", BackendChoice("ort", "fp32", threads)))
    variant_inner = variant_backend or create_backend(bundle, "cpu", candidate)
    variant = RecordingBackend(variant_inner, keep=False)
    ref_pipe, var_pipe = Pipeline(bundle, reference), Pipeline(bundle, variant)
    cosines: list[float] = []
    psnrs: list[float] = []
    for i in range(samples):
        plan = GenerationPlan(prompts=(PROMPTS[i % len(PROMPTS)],), negative_prompts=(NEGATIVE,), seeds=(1000 + i,),
                              subseeds=(0,), width=size, height=size, steps=steps, cfg_scale=7.0, sampler="Euler",
                              scheduler="automatic")
        expected = np.asarray(ref_pipe.txt2img(plan).images[0])
        for inputs, output in reference.calls:
            cosines.append(cosine(next(iter(variant_inner.run("unet", inputs).values())), output))
        reference.calls.clear()
        got = np.asarray(var_pipe.txt2img(plan).images[0])
        psnrs.append(round(psnr_db(got, expected), 2))
    # The first call of each backend includes session creation / compilation: not a call time.
    return GateResult(
        variant=name or variant_name(candidate), reference=REFERENCE, passed=min(cosines) >= MIN_COSINE,
        min_cosine=round(min(cosines), 6), mean_cosine=round(statistics.fmean(cosines), 6), psnr_db=tuple(psnrs),
        samples=samples, size=size, steps=steps, unet_call_s=round(statistics.median(variant.seconds[1:]), 3),
        reference_unet_call_s=round(statistics.median(reference.seconds[1:]), 3),
    )


def record(bundle_path: str | Path, result: GateResult) -> None:
    """Write the result into the bundle's manifest (`quality_gate.<variant>`), keeping other variants'."""
    path = Path(bundle_path) / MANIFEST_NAME
    data = json.loads(path.read_text())
    gates = dict(data.get("quality_gate") or {})
    gates[result.variant] = asdict(result)
    data["quality_gate"] = gates
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def available(variant: str) -> bool:
    backend, _, precision = variant.partition("-")
    if backend == "ort":
        return precision == "fp32"
    if backend != "openvino":
        return False
    from engine.openvino_backend import cpu_supports_bf16, openvino_available

    return openvino_available() and (precision != "bf16" or cpu_supports_bf16())


def pick_variant(bundle: Bundle) -> tuple[str, str]:
    """(backend, precision): the fastest variant whose recorded gate passed and that runs here; the reference
    ONNX Runtime fp32 when none is recorded (its own time is recorded with every gate)."""
    gates = load_bundle(bundle.path).manifest.quality_gate if bundle.path else {}
    times: dict[str, float] = {}
    for name, gate in (gates or {}).items():
        times.setdefault(gate.get("reference", REFERENCE), gate.get("reference_unet_call_s") or float("inf"))
        if gate.get("passed") and available(name):
            times[name] = gate.get("unet_call_s") or float("inf")
    best = min(times, key=times.get) if times else REFERENCE
    backend, _, precision = best.partition("-")
    return backend, precision

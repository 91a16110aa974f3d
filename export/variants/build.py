"""Build a variant of a bundle, gate it against the portable fp32 graphs, record both in the manifest.

Gates (numbers in the record's `gate`):
- fp16: engine/quality_gate.py's measures, the variant's graphs on ONNX Runtime CPU (which runs fp16 graphs by
  casting around the kernels it has only in fp32: fp16 storage rounding, fp32 arithmetic; a GPU computes some
  sums in fp16 too, so the GPU gate is the final word there): per-UNet-call cosine ≥ 0.999 against fp32 on the
  reference's own inputs, image PSNR reported.
- trt-ready: every component's outputs on fixed inputs within 1e-4 relative (max |Δ| / max |fp32|) of the portable
  graph on ONNX Runtime CPU, plus the same UNet gate. Engines built from it are gated on the GPU.
- ort-cuda: CUDA-only contrib ops; built and checked with onnx.checker here, its gate status is `needs-gpu`
  unless a CUDA provider really runs it (`--provider cuda`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from engine.bundle import MANIFEST_NAME, load_bundle
from engine.variants import VARIANTS_DIR, variant_view

log = logging.getLogger(__name__)

KINDS = ("fp16", "ort-cuda", "trt-ready")
SDXL_VAE_FP32 = "the SDXL VAE overflows in fp16 (NaN, black images); kept fp32 as demoDiffusion and ORT's SD tooling do"
MAX_RELATIVE = 1e-4
CPU = "CPUExecutionProvider"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _components(bundle) -> list[str]:
    names = ["text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"]
    return [c for c in names if bundle.has_component(c)]


def _convert(kind: str, src: Path, component: str) -> tuple[onnx.ModelProto, dict]:
    if kind == "fp16":
        from export.variants.fp16 import convert_file, upcasts_attention

        # SD 2.x 768-v's upcast_attention: Q·Kᵀ, softmax, ·V kept fp32 (export/variants/fp16.py)
        return convert_file(src), ({"fp32_attention": True} if upcasts_attention(src) else {})
    model = onnx.load(str(src))
    if kind == "trt-ready":
        from export.variants.trt_ready import trt_ready

        graph, unchunked = trt_ready(model)
        return graph, {"unchunked_attentions": unchunked}
    from export.variants.ort_cuda import contrib_ops, ort_cuda

    graph, fused = ort_cuda(model, component, float16=True)
    return graph, {"fused": fused, "contrib_ops": contrib_ops(graph)}


def _keeps_fp32(kind: str, component: str, architecture: str) -> bool:
    return kind in ("fp16", "ort-cuda") and architecture in ("sdxl", "sdxl-refiner") and component.startswith("vae")


def build_variant(bundle_path: Path, kind: str, gate: bool = True, provider: str = "cpu", samples: int = 8,
                  size: int = 256, steps: int = 4) -> dict:
    """Write `BUNDLE/variants/<kind>/`, gate it, record it; returns the record."""
    from export.onnx_layout import save_component

    if kind not in KINDS:
        raise ValueError(f"variant {kind!r}: expected one of {', '.join(KINDS)}")
    bundle = load_bundle(bundle_path)
    root = bundle.path / VARIANTS_DIR
    root.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}.tmp-", dir=root))
    tmp.chmod(0o755)
    components: dict[str, dict] = {}
    try:
        for component in _components(bundle):
            if _keeps_fp32(kind, component, bundle.manifest.architecture):
                components[component] = {"path": None, "precision": "fp32", "reason": SDXL_VAE_FP32}
                continue
            log.info("%s: %s ...", kind, component)
            graph, notes = _convert(kind, bundle.component_path(component), component)
            out = tmp / component / "model.onnx"
            # Weights the fp16 pass left fp32 are still in the portable data file: streamed from there.
            files = save_component(graph, out, base_dir=bundle.component_path(component).parent)
            del graph
            onnx.checker.check_model(str(out))  # by path: external data beside it
            components[component] = {
                "path": f"{VARIANTS_DIR}/{kind}/{component}/model.onnx",
                "precision": "fp32" if kind == "trt-ready" else "fp16",
                **files.to_dict(), **notes,
            }
        final = root / kind
        if final.exists():
            old = root / f".{kind}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {
        "components": components,
        "precision": "fp32" if kind == "trt-ready" else "fp16",
        # The NumPy loop feeds and reads float32 whatever the variant computes in (keep_io_types).
        "io_dtype": "float32",
        "runs_on": {"fp16": ["CUDAExecutionProvider", "TensorrtExecutionProvider", CPU],
                    "ort-cuda": ["CUDAExecutionProvider"],
                    "trt-ready": ["TensorrtExecutionProvider", "tensorrt", CPU]}[kind],
        "attention": "chunked" if kind == "fp16" else "unchunked",
        "created": _now(),
        "source_sha256": bundle.manifest.source_sha256,
        "gate": {"passed": None, "status": "not-run"},
    }
    record_variant(bundle.path, kind, record)
    if gate:
        record = gate_variant(bundle.path, kind, provider=provider, samples=samples, size=size, steps=steps)
    return record


def record_variant(bundle_path: Path, name: str, record: dict) -> None:
    """Write `record` as the manifest's `variants.<name>` (atomically), keeping everything else."""
    path = Path(bundle_path) / MANIFEST_NAME
    data = json.loads(path.read_text())
    variants = dict(data.get("variants") or {})
    variants[name] = record
    data["variants"] = variants
    tmp = path.with_suffix(f".json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def _fixed_inputs(bundle, component: str, session, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fixed inputs for every input of a component's session: batch 2, 64 px (8×8 latents), 77 tokens; token
    ids with BOS/EOS, a fractional and a small timestep, normal noise elsewhere (SDXL's pooled/time ids too)."""
    m = bundle.manifest
    sizes = {"batch": 2, "sequence": m.text_max_length, "latent_height": 8, "latent_width": 8,
             "height": 64 if component == "vae_encoder" else 8, "width": 64 if component == "vae_encoder" else 8}
    feed = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) else sizes.get(d, 2) for d in spec.shape]
        if spec.type == "tensor(int64)":
            ids = rng.integers(0, 49406, size=shape, dtype=np.int64)
            ids[:, 0], ids[:, -5:] = m.bos_token_id, m.eos_token_id
            feed[spec.name] = ids
        elif spec.name == "timestep":
            feed[spec.name] = np.resize(np.array([998.7, 20.25], np.float32), shape)
        else:
            values = rng.standard_normal(shape).astype(np.float32)
            feed[spec.name] = np.clip(values, -1, 1) if component == "vae_encoder" else values
    return feed


def compare_components(bundle, view) -> dict[str, float]:
    """Per component: the largest max |variant − fp32| / max |fp32| over its outputs, ONNX Runtime CPU."""
    import onnxruntime as ort

    errors = {}
    for component in _components(bundle):
        if view.component_path(component) == bundle.component_path(component):
            continue
        ref = ort.InferenceSession(str(bundle.component_path(component)), providers=[CPU])
        got = ort.InferenceSession(str(view.component_path(component)), providers=[CPU])
        feed = _fixed_inputs(bundle, component, ref, np.random.default_rng(0))
        expected, actual = ref.run(None, feed), got.run(None, feed)
        worst = 0.0
        for a, b in zip(expected, actual, strict=True):
            scale = float(np.max(np.abs(a))) or 1.0
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) / scale)
        errors[component] = worst
    return errors


def _gpu_only_reason(view, provider: str) -> str | None:
    """Why the ort-cuda graphs cannot be gated with `provider` here (None when a CUDA provider really runs)."""
    import onnxruntime as ort

    if provider == "cpu":
        return "CUDA-only contrib ops (com.microsoft); gate it on a GPU: --provider cuda"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime-gpu with the CUDA provider is not installed"
    session = ort.InferenceSession(str(view.component_path("unet")),
                                   providers=["CUDAExecutionProvider", CPU])
    if session.get_providers()[0] != "CUDAExecutionProvider":  # onnxruntime-gpu without a GPU falls back
        return f"no usable GPU: the session got {session.get_providers()}"
    return None


def gate_variant(bundle_path: Path, name: str, provider: str = "cpu", samples: int = 8, size: int = 256,
                 steps: int = 4) -> dict:
    """Measure the variant's files as they are now against the portable graphs and record the gate."""
    from engine.backend import OrtBackend
    from engine.quality_gate import MIN_COSINE, run_gate

    bundle = load_bundle(bundle_path)
    view = variant_view(bundle, name)
    record = dict(bundle.manifest.variants[name])
    gate: dict = {"min_cosine_required": MIN_COSINE, "provider": provider}
    kind = name
    if kind == "ort-cuda":
        reason = _gpu_only_reason(view, provider)
        if reason:
            gate |= {"passed": None, "status": "needs-gpu", "reason": reason}
            record["gate"] = gate
            record_variant(bundle.path, name, record)
            return record
    if kind == "trt-ready":
        errors = compare_components(bundle, view)
        gate |= {"max_relative_error": errors, "max_relative_error_allowed": MAX_RELATIVE}
    providers = "cuda" if provider == "cuda" else "cpu"
    result = run_gate(bundle, None, samples=samples, size=size, steps=steps,
                      variant_backend=OrtBackend(view, providers), name=name)
    passed = result.passed and all(e <= MAX_RELATIVE for e in gate.get("max_relative_error", {}).values())
    measures = asdict(result)
    gate |= {
        "passed": passed, "status": "passed" if passed else "failed",
        "min_cosine": measures["min_cosine"], "mean_cosine": measures["mean_cosine"],
        "psnr_db": list(measures["psnr_db"]), "psnr_min_db": result.psnr_min_db,
        "unet_call_s": measures["unet_call_s"], "reference_unet_call_s": measures["reference_unet_call_s"],
        "inputs": {"samples": samples, "size": size, "steps": steps, "sampler": "Euler", "cfg_scale": 7.0,
                   "seeds": [1000 + i for i in range(samples)], "prompts": "engine/quality_gate.py PROMPTS"},
        "measured": measures["measured"],
    }
    if not passed:
        gate["reason"] = (f"min cosine {result.min_cosine} < {MIN_COSINE}" if not result.passed
                          else f"component outputs beyond {MAX_RELATIVE} relative: {gate['max_relative_error']}")
    record["gate"] = gate
    record_variant(bundle.path, name, record)
    log.info("%s gate: %s (min cosine %s, PSNR %s dB)", name, gate["status"], result.min_cosine,
             list(result.psnr_db))
    return record

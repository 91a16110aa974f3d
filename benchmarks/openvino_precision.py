"""Where OpenVINO bf16's error on a UNet comes from: per-call cosine vs ONNX Runtime fp32 with chosen ops kept f32.

    # 1. the reference calls (ORT fp32 through the gate's own recording; ≈4 GB for SD 1.5)
    flock /tmp/team/fullsize.lock nice -n 19 .venv/bin/python -m benchmarks.openvino_precision BUNDLE --record
    # 2. every variant replayed on those inputs (one compiled bf16 UNet at a time, ≈2 GB)
    flock /tmp/team/fullsize.lock nice -n 19 .venv/bin/python -m benchmarks.openvino_precision BUNDLE \
        --variants ir-f16 onnx timestep timestep+mvn timestep+softmax timestep+out all

Variants: `ir-f16` the f16 IR as written before engine/openvino_precision.py (BUNDLE/.openvino-f16, no marks;
what the gate measured; `ir-f16+timestep` with the marks), `onnx` the ONNX read directly (f32 constants, no
marks), `timestep` engine/openvino_precision.py's marks on the ONNX, `+mvn` every MVN (GroupNorm/LayerNorm
statistics) kept f32 as well, `+softmax` every Softmax (in the attention chunks' If bodies too), `+out`
conv_norm_out → conv_out, `all` = timestep+mvn+softmax+out, `backend` the real OpenVinoBackend (bf16; it writes
its f16 IR into BUNDLE/.openvino-f16-2: give it a copy of a shared bundle). Prints one JSON line per variant
(min/mean cosine, median call time); numbers in benchmarks/RESULTS.md. `--diffusers DIR/unet` adds diffusers' UNet in bf16 vs fp32
on the same inputs (torch: benchmark code only). `--interleave N --variants ir-f16 backend`: the call times only,
both compiled side by side and replayed in turns, N rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def record_calls(bundle_path: Path, calls_file: Path, samples: int, size: int, steps: int, threads: int) -> None:
    """The UNet calls ORT fp32 makes in the gate's txt2img (same prompts, seeds, sampler), inputs and outputs."""
    from engine.backend import BackendChoice, create_backend
    from engine.bundle import load_bundle
    from engine.pipeline import Pipeline
    from engine.plan import GenerationPlan
    from engine.quality_gate import NEGATIVE, PROMPTS, RecordingBackend

    bundle = load_bundle(bundle_path)
    reference = RecordingBackend(create_backend(bundle, "cpu", BackendChoice("ort", "fp32", threads)))
    pipe = Pipeline(bundle, reference)
    for i in range(samples):
        plan = GenerationPlan(prompts=(PROMPTS[i % len(PROMPTS)],), negative_prompts=(NEGATIVE,), seeds=(1000 + i,),
                              subseeds=(0,), width=size, height=size, steps=steps, cfg_scale=7.0, sampler="Euler",
                              scheduler="automatic")
        pipe.txt2img(plan)
    arrays = {}
    for n, (inputs, output) in enumerate(reference.calls):
        arrays.update({f"{n}/in/{k}": v for k, v in inputs.items()})
        arrays[f"{n}/out"] = output
    np.savez(calls_file, **arrays)
    print(json.dumps({"recorded_calls": len(reference.calls), "ort_fp32_call_s": reference.seconds}))


def load_calls(calls_file: Path) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    data = np.load(calls_file)
    count = 1 + max(int(k.split("/")[0]) for k in data.files)
    calls = []
    for n in range(count):
        inputs = {k.split("/", 2)[2]: data[k] for k in data.files if k.startswith(f"{n}/in/")}
        calls.append((inputs, data[f"{n}/out"]))
    return calls


def _all_ops(model):
    """Every node of `model`, the bodies of If/Loop included (the chunked attention lives in If bodies)."""
    for node in model.get_ordered_ops():
        yield node
        if node.get_type_name() in ("If", "Loop", "TensorIterator"):
            bodies = [node.get_function(i) for i in range(2)] if node.get_type_name() == "If" else \
                [node.get_function()]
            for body in bodies:
                yield from _all_ops(body)


def _output_tail(model) -> list:
    """conv_norm_out (MVN and its affine), SiLU, conv_out and its bias: the nodes behind the last MVN."""
    tail: dict[str, object] = {}
    frontier = [r.input_value(0).get_node() for r in model.get_results()]
    while frontier:
        node = frontier.pop()
        if node.get_friendly_name() in tail or node.get_type_name() == "Parameter":
            continue
        tail[node.get_friendly_name()] = node
        sources = [p.get_source_output().get_node() for p in node.inputs()]
        tail.update((s.get_friendly_name(), s) for s in sources if s.get_type_name() == "Constant")
        if node.get_type_name() != "MVN":
            frontier.append(sources[0])  # the data path only: a Reshape's shape input leads back to everything
    return list(tail.values())


def mark(model, parts: set[str]) -> int:
    from engine.openvino_precision import keep_f32, keep_timestep_f32

    count = 0
    if "timestep" in parts:
        count += keep_timestep_f32(model)
    if "mvn" in parts:
        count += keep_f32(n for n in _all_ops(model) if n.get_type_name() == "MVN")
    if "softmax" in parts:
        count += keep_f32(n for n in _all_ops(model) if n.get_type_name() == "Softmax")
    if "out" in parts:
        count += keep_f32(_output_tail(model))
    return count


def compile_variant(bundle_path: Path, name: str, shapes: dict[str, list[int]], threads: int):
    """(compiled UNet, nodes marked, compile seconds) of one variant."""
    import openvino as ov

    start = time.perf_counter()
    if name == "backend":
        from engine.bundle import load_bundle
        from engine.openvino_backend import OpenVinoBackend

        backend = OpenVinoBackend(load_bundle(bundle_path), "bf16", threads=threads)
        compiled, marked = backend.compiled("unet", {k: tuple(v) for k, v in shapes.items()}), None
    else:
        core = ov.Core()
        source = bundle_path / ".openvino-f16" / "unet" / "model.xml" if name.startswith("ir-f16") else \
            bundle_path / "unet" / "model.onnx"
        model = core.read_model(str(source))
        model.reshape({k: ov.PartialShape(v) for k, v in shapes.items()})
        parts = {"timestep", "mvn", "softmax", "out"} if name == "all" else set(name.split("+")) - {"onnx", "ir-f16"}
        marked = mark(model, parts)
        config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": threads}
        compiled = core.compile_model(model, "CPU", config)
        del model
    return compiled, marked, time.perf_counter() - start


def replay(request, calls) -> tuple[list[float], list[float]]:
    """(cosine vs the reference output, seconds) per recorded call."""
    from engine.quality_gate import cosine

    cosines, seconds = [], []
    for inputs, expected in calls:
        t0 = time.perf_counter()
        request.infer(inputs)
        seconds.append(time.perf_counter() - t0)
        cosines.append(cosine(request.get_output_tensor(0).data.copy(), expected))
    return cosines, seconds


def run_variant(bundle_path: Path, name: str, calls, threads: int) -> dict:
    shapes = {k: list(v.shape) for k, v in calls[0][0].items()}
    compiled, marked, compile_s = compile_variant(bundle_path, name, shapes, threads)
    cosines, seconds = replay(compiled.create_infer_request(), calls)
    return {"variant": name, "marked": marked, "min_cosine": round(min(cosines), 6),
            "mean_cosine": round(statistics.fmean(cosines), 6), "cosines": [round(c, 6) for c in cosines],
            "median_call_s": round(statistics.median(seconds[1:] or seconds), 3), "compile_s": round(compile_s, 1)}


def interleaved_times(bundle_path: Path, names: list[str], calls, threads: int, rounds: int) -> dict:
    """Call times of several variants compiled side by side and replayed in turns (round r: every variant once),
    so a load change on the shared machine hits all of them alike."""
    shapes = {k: list(v.shape) for k, v in calls[0][0].items()}
    requests = {name: compile_variant(bundle_path, name, shapes, threads)[0].create_infer_request() for name in names}
    for request in requests.values():
        replay(request, calls[:1])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, request in requests.items():
            seconds[name] += replay(request, calls)[1]
    return {"interleaved_rounds": rounds, "calls_each": len(calls) * rounds,
            "median_call_s": {name: round(statistics.median(s), 4) for name, s in seconds.items()},
            "mean_call_s": {name: round(statistics.fmean(s), 4) for name, s in seconds.items()}}


def diffusers_bf16(unet_dir: Path, calls, threads: int) -> dict:
    """Context for the gate's threshold: diffusers' own UNet in bf16 (`unet.to(torch.bfloat16)`) against its fp32
    on the same inputs, and its fp32 against ONNX Runtime fp32 (the export's own error)."""
    import torch
    from diffusers import UNet2DConditionModel

    from engine.quality_gate import cosine

    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32).eval()
    result: dict[str, object] = {"variant": "diffusers"}
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        unet.to(dtype)
        got, seconds = [], []
        with torch.inference_mode():
            for inputs, _ in calls:
                t0 = time.perf_counter()
                out = unet(torch.from_numpy(inputs["sample"]).to(dtype), torch.from_numpy(inputs["timestep"]),
                           torch.from_numpy(inputs["encoder_hidden_states"]).to(dtype)).sample
                seconds.append(time.perf_counter() - t0)
                got.append(out.float().numpy())
        outputs[str(dtype)] = got
        result[f"{dtype}_median_call_s"] = round(statistics.median(seconds[1:] or seconds), 3)
    ort = [out for _, out in calls]
    pairs = {"bf16_vs_fp32": (outputs["torch.bfloat16"], outputs["torch.float32"]),
             "fp32_vs_ort_fp32": (outputs["torch.float32"], ort), "bf16_vs_ort_fp32": (outputs["torch.bfloat16"], ort)}
    for name, pair in pairs.items():
        cosines = [cosine(a, b) for a, b in zip(*pair, strict=True)]
        result[name] = {"min_cosine": round(min(cosines), 6), "mean_cosine": round(statistics.fmean(cosines), 6)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--calls", type=Path, default=Path("/tmp/ovprec-unet-calls.npz"), help="recorded calls")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--interleave", type=int, default=0,
                        help="instead of one replay per variant: call times of all --variants, N rounds in turns")
    parser.add_argument("--diffusers", type=Path, help="a diffusers UNet folder of the same model (bf16 context)")
    args = parser.parse_args()
    if args.record:
        record_calls(args.bundle, args.calls, args.samples, args.size, args.steps, args.threads)
    calls = load_calls(args.calls) if args.variants or args.diffusers else []
    if args.interleave:
        print(json.dumps(interleaved_times(args.bundle, args.variants, calls, args.threads, args.interleave)))
    for name in [] if args.interleave else args.variants:
        print(json.dumps(run_variant(args.bundle, name, calls, args.threads)), flush=True)
    if args.diffusers:
        print(json.dumps(diffusers_bf16(args.diffusers, calls, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`sdedge build-engines --model BUNDLE`: the UNet's TensorRT engines for this GPU, ahead of time, with a progress
bar. The server never builds one at request time (engine/trt_runtime.py), so this is how engines come to exist."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

NO_GPU = 2  # exit status without a GPU/TensorRT: nothing was built, and nothing could be


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an sdedge bundle")
    p.add_argument("--engine-dir", default=None,
                   help="engine cache folder (default: <bundle>/engines); the server reads it with "
                        "--providers tensorrt")
    p.add_argument("--profiles", default=None, metavar="NAME[,NAME...]",
                   help="only these profiles (default: all; see --list)")
    p.add_argument("--batch-max", type=int, default=4, help="largest batch of images a profile covers (default 4)")
    p.add_argument("--workspace-gb", type=float, default=None, help="TensorRT builder workspace (default: TRT's)")
    p.add_argument("--fp32", action="store_true", help="build fp32 engines (default fp16)")
    p.add_argument("--force", action="store_true", help="rebuild engines that are already built")
    p.add_argument("--native", action="store_true",
                   help="refittable engines through the TensorRT API (LoRA by refit) instead of ORT's TensorRT EP")
    p.add_argument("--list", action="store_true", help="print the profiles and whether each is built; build nothing")


def no_gpu_reason() -> str | None:
    """Why engines cannot be built here, or None."""
    import onnxruntime as ort

    from engine.trt_cache import has_nvidia_gpu, probe_gpu

    if not has_nvidia_gpu():
        return "no NVIDIA GPU found (nvidia-smi is missing or lists no GPU)"
    if probe_gpu() is None:
        return "an NVIDIA GPU but no TensorRT (neither the tensorrt package nor libnvinfer loads)"
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "ONNX Runtime has no TensorRT EP: install onnxruntime-gpu (extra `gpu`) instead of onnxruntime"
    return None


def said_no_gpu(prefix: str, consequence: str) -> bool:
    """Tell on stderr why this machine cannot run TensorRT (`prefix` + the reason + `consequence`) and return True;
    False, saying nothing, where it can. build-engines and benchmarks/gpu_check.py exit NO_GPU after it."""
    reason = no_gpu_reason()
    if reason is None:
        return False
    print(f"{prefix}{reason}. {consequence}", file=sys.stderr)
    return True


def run(args: argparse.Namespace) -> int:
    if said_no_gpu("sdedge build-engines: ", "TensorRT engines are built on the GPU that will run them; nothing was "
                   "built."):
        return NO_GPU
    import onnxruntime as ort

    from engine.bundle import load_bundle
    from engine.trt_build import BuildResult, build_engines, unet_signature
    from engine.trt_cache import is_built, probe_gpu
    from engine.trt_profiles import TrtBuildOptions, a1111_profiles
    from engine.trt_runtime import default_engine_root, plan_engines

    gpu = probe_gpu()
    bundle = load_bundle(args.model)
    root = Path(args.engine_dir) if args.engine_dir else default_engine_root(bundle)
    profiles = a1111_profiles(unet_signature(bundle), bundle.manifest.architecture, args.batch_max)
    if args.profiles:
        wanted = [n.strip() for n in args.profiles.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {p.name for p in profiles})
        if unknown:
            print(f"sdedge build-engines: unknown profile(s) {', '.join(unknown)}; known: "
                  f"{', '.join(p.name for p in profiles)}", file=sys.stderr)
            return 1
        profiles = [p for p in profiles if p.name in wanted]
    build = TrtBuildOptions(fp16=not args.fp32, max_workspace_bytes=int(args.workspace_gb * (1 << 30))
                            if args.workspace_gb else None)
    print(f"{gpu.name} (sm {gpu.compute_capability}), TensorRT {gpu.tensorrt_version}, ONNX Runtime "
          f"{ort.__version__}; engines in {root}")
    if args.list:
        for e in plan_engines(bundle, root, gpu, ort.__version__, profiles, build,
                              "unet-native" if args.native else "unet"):
            print(f"  {e.profile.name:<20} {'built' if is_built(e.directory) else 'not built':<10} {e.directory.name}")
        return 0
    bar = tqdm(total=len(profiles), unit="engine", dynamic_ncols=True)

    def done(result: BuildResult) -> None:
        bar.update(1)
        what = "already built" if result.skipped else f"built in {result.seconds:.0f} s"
        bar.write(f"  {result.profile}: {what} -> {result.directory}")

    try:
        build_engines(bundle, root, gpu, profiles, build, args.force,
                      on_start=lambda e: bar.set_description(f"building {e.profile.name}"), on_done=done,
                      native=args.native)
    finally:
        bar.close()
    return 0

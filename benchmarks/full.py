"""`make bench-full` (`python -m benchmarks.full`): sdedge on each backend/precision, diffusers fp32 and diffusers
bf16 side by side on a full-size random-weight SD 1.5, or SD 2.1 with `--model sd21` (benchmarks/full_models.py),
at 256 and 512 px.

Each (pipeline, size) runs in its own process (benchmarks/full_child.py), so its peak RSS is its own. Reported:
load time, median UNet call (CFG batch 2), VAE decode, total per image, peak RSS, and each as a ratio to
diffusers fp32 and bf16. `--write` puts the table into benchmarks/RESULTS.md between the full-size markers,
leaving `make bench`'s sections alone. Full-size processes take ~10 GiB: run one benchmark at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.full_child import PIPELINES
from benchmarks.machine import _cpuinfo_field, describe, load_average

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench-full: begin -->", "<!-- bench-full: end -->"
TITLES = {"sd15": ("SD 1.5", "export/configs/sd15", "issue 16"),
          "sd21": ("SD 2.1", "export/configs/sd2-base: 512 px, epsilon, OpenCLIP-H", "issue 14")}


def markers(model: str) -> tuple[str, str]:
    """Each model's section between its own markers, so one model's run leaves the other's rows alone."""
    return (BEGIN, END) if model == "sd15" else (f"<!-- bench-full {model}: begin -->",
                                                 f"<!-- bench-full {model}: end -->")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "f16c", "fma")


def run_child(pipeline: str, size: int, models, steps: int, threads: int, image_dir: Path | None = None) -> dict:
    command = [sys.executable, "-m", "benchmarks.full_child", "--pipeline", pipeline, "--bundle", str(models.bundle),
               "--diffusers", str(models.diffusers), "--size", str(size), "--steps", str(steps),
               "--threads", str(threads)]
    if image_dir:
        command += ["--image-out", str(image_dir / f"{pipeline}-{size}.npy")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"pipeline": pipeline, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def table(rows: list[dict], sizes: list[int]) -> list[str]:
    by = {(r["pipeline"], r["size"]): r for r in rows}
    out = ["| pipeline | size | load s | UNet call s | VAE decode s | total s/image | peak RSS MiB | "
           "time ÷ diffusers fp32 | time ÷ diffusers bf16 | RSS ÷ diffusers fp32 | RSS ÷ diffusers bf16 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        fp32, bf16 = by.get(("diffusers-fp32", size), {}), by.get(("diffusers-bf16", size), {})
        for r in (by[(p, s)] for p, s in by if s == size):
            if "error" in r:
                out.append(f"| {r['pipeline']} | {size} | failed: {' '.join(r['error'])} |" + " |" * 9)
                continue
            out.append(
                f"| {r['pipeline']} | {size} | {r['load_s']} | {r['unet_call_s']} | {r['vae_decode_s']} | "
                f"{r['total_s']} | {r['peak_rss_mib']:.0f} | {ratio(r['total_s'], fp32.get('total_s'))} | "
                f"{ratio(r['total_s'], bf16.get('total_s'))} | {ratio(r['peak_rss_mib'], fp32.get('peak_rss_mib'))}"
                f" | {ratio(r['peak_rss_mib'], bf16.get('peak_rss_mib'))} |")
    return out


def markdown(args, rows: list[dict], machine: dict, loads: dict) -> str:
    flags = set((_cpuinfo_field("flags") or "").split())
    v = machine["versions"]
    title, configs, issue = TITLES[args.model]
    begin, end = markers(args.model)
    return "\n".join([
        begin,
        f"## Full-size {title} ({issue}): `make bench-full`",
        "",
        f"Written by `python -m benchmarks.full --model {args.model} --sizes {' '.join(map(str, args.sizes))} --steps {args.steps} "
        f"--threads {args.threads}` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
        f"CPU: {machine['cpu']}, {machine['usable_cpus']} usable CPUs; flags: "
        + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS) + ". "
        f"onnxruntime {v['onnxruntime']}, openvino {_version('openvino')}, torch {v['torch']}, "
        f"diffusers {v['diffusers']}. Load average {loads['start']} at start, {loads['end']} at end "
        "(the machine is shared: times are noisy, ratios in one run are what counts).",
        "",
        f"{title}'s architecture ({configs}) with seeded random weights, txt2img, batch 1, "
        f"Euler, {args.steps} steps over A1111's sigmas, CFG 7 (UNet batch 2), the same initial latents; each "
        "(pipeline, size) in its own process: load, a 1-step warm-up image (sessions, OpenVINO's compile for "
        "the shape), then the timed image. UNet call = median call in the timed image; peak RSS = the "
        "process's VmHWM (load, warm-up and the timed image).",
        "",
        *table(rows, sorted({r["size"] for r in rows}, reverse=True)),
        "",
        *gate_lines([args.bundle_for_gates, *args.gate_bundles]),
        "Raw rows:",
        "",
        "```",
        *(json.dumps(r) for r in rows),
        "```",
        end,
    ])


def gate_lines(bundles: list[Path]) -> list[str]:
    """The quality gates recorded in these bundles' manifests (`sdedge gate`, engine/quality_gate.py)."""
    lines = []
    for bundle in bundles:
        manifest = bundle / "manifest.json"
        gates = json.loads(manifest.read_text()).get("quality_gate") if manifest.is_file() else None
        for gate in (gates or {}).values():
            lines.append(
                f"| {json.loads(manifest.read_text()).get('name')} | {gate['variant']} vs {gate['reference']} | "
                f"{gate['samples']} × {gate['size']} px, {gate['steps']} steps | {gate['min_cosine']} | "
                f"{min(gate['psnr_db'])}–{max(gate['psnr_db'])} dB | {gate['unet_call_s']} s vs "
                f"{gate['reference_unet_call_s']} s | {'pass' if gate['passed'] else 'FAIL'} ({gate['measured']}) |")
    if not lines:
        return []
    return ["Quality gates recorded in the bundles (`sdedge gate`: per-UNet-call cosine ≥ 0.999 against ONNX "
            "Runtime fp32 on the same inputs; image PSNR of the whole txt2img on the same noise):", "",
            "| model | variant | samples | min cosine | PSNR | UNet call | gate |", "|---|---|---|---|---|---|---|",
            *lines, ""]


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_results(path: Path, section: str, model: str = "sd15") -> None:
    begin, end = markers(model)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.full_models import ensure_full_models

    parser = argparse.ArgumentParser(prog="python -m benchmarks.full", description=__doc__)
    parser.add_argument("--model", choices=TITLES, default="sd15",
                        help="the full-size architecture (random weights): SD 1.5 or SD 2.1 (512 px base)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--write", type=Path, help="update the full-size section of this RESULTS.md")
    parser.add_argument("--gate-bundles", type=Path, nargs="*", default=[],
                        help="more bundles whose recorded quality gates go into the report")
    parser.add_argument("--models-dir", type=Path,
                        help="a cached build to use as is (its `diffusers/` and `bundle/`), e.g. one built before the "
                             "export code changed (the cache key hashes export/)")
    parser.add_argument("--previous", type=Path,
                        help="JSON lines of rows measured earlier with the same settings, kept in the table unless "
                             "measured again (a run finished in parts on a busy machine)")
    parser.add_argument("--image-dir", type=Path,
                        help="save each row's timed image here as <pipeline>-<size>.npy (to compare two code versions)")
    args = parser.parse_args(argv)
    if args.image_dir:
        args.image_dir.mkdir(parents=True, exist_ok=True)
    machine = describe()
    loads = {"start": tuple(round(x, 2) for x in load_average())}
    if args.models_dir:
        from benchmarks.full_models import FullModels

        models = FullModels(args.models_dir / "diffusers", args.models_dir / "bundle")
    else:
        models = ensure_full_models(args.model)
    args.bundle_for_gates = models.bundle
    rows = [json.loads(line) for line in args.previous.read_text().splitlines()
            if line.startswith("{")] if args.previous else []
    for size in args.sizes:
        for pipeline in args.pipelines:
            row = run_child(pipeline, size, models, args.steps, args.threads, args.image_dir)
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["pipeline"], r["size"]) != (pipeline, size)] + [row]
            loads["end"] = tuple(round(x, 2) for x in load_average())
            if args.write:  # after every row: a long run stopped early still leaves its finished rows
                write_results(args.write, markdown(args, rows, machine, loads), args.model)
    for line in table(rows, sorted({r["size"] for r in rows}, reverse=True)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`sdedge generate "prompt" [--grpc HOST:PORT | --url URL] -o out.png`: one txt2img with a progress bar."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

DEFAULT_GRPC = "127.0.0.1:50051"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--grpc", metavar="HOST:PORT", help=f"gRPC server (default {DEFAULT_GRPC})")
    target.add_argument("--url", help="REST server, e.g. http://127.0.0.1:7860")
    p.add_argument("-o", "--output", default="out.png", help="image file; more images get -1, -2, … suffixes")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sampler", default=None, help="sampler name, e.g. Euler a")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-iter", type=int, default=None)
    p.add_argument("--auth", default=None, help="user:pass, when the server runs with --api-auth")
    p.add_argument("--timeout", type=float, default=None, help="seconds; the job is cancelled past it")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "steps": args.steps,
              "width": args.width, "height": args.height, "seed": args.seed, "sampler_name": args.sampler,
              "scheduler": args.scheduler, "cfg_scale": args.cfg_scale, "batch_size": args.batch_size,
              "n_iter": args.n_iter}
    return {k: v for k, v in fields.items() if v is not None}


def _show(bar: tqdm, job_no: int, job_count: int, step: int, steps: int) -> None:
    if steps <= 0 or job_count <= 0:
        return
    bar.total = steps * job_count
    bar.n = job_no * steps + step
    bar.refresh()


def via_grpc(target: str, args: argparse.Namespace, bar: tqdm) -> tuple[list[bytes], dict]:
    from service.cli.client import SdEdgeClient

    fields = _fields(args)
    with SdEdgeClient(target, auth=args.auth, timeout=args.timeout) as client:
        generation = client.generate(
            fields.pop("prompt"),
            on_progress=lambda p: _show(bar, p.job_no, p.job_count, p.sampling_step, p.sampling_steps),
            **fields,
        )
    return [image.data for image in generation.images], generation.info


def _request(url: str, auth: str | None, body: dict | None = None, timeout: float | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def via_rest(url: str, args: argparse.Namespace, bar: tqdm) -> tuple[list[bytes], dict]:
    """POST txt2img; sdapi has no progress stream, so /progress is polled beside it as A1111 clients do."""
    url = url.rstrip("/")
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.5):
            try:
                p = _request(f"{url}/sdapi/v1/progress?skip_current_image=true", args.auth, timeout=5)
            except (urllib.error.URLError, OSError, ValueError):
                return  # no /progress on this server: the bar just stays put
            s = p.get("state") or {}
            _show(bar, s.get("job_no", 0), s.get("job_count", 0), s.get("sampling_step", 0),
                  s.get("sampling_steps", 0))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        response = _request(f"{url}/sdapi/v1/txt2img", args.auth, _fields(args), args.timeout)
    finally:
        done.set()
    return [base64.b64decode(image) for image in response.get("images") or []], json.loads(response["info"])


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    import grpc

    try:
        with tqdm(total=args.steps, unit="step", desc="sampling", file=sys.stderr) as bar:
            if args.url:
                images, info = via_rest(args.url, args, bar)
            else:
                images, info = via_grpc(args.grpc or DEFAULT_GRPC, args, bar)
            bar.n = bar.total or bar.n
            bar.refresh()
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as exc:
        print(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 1
    seeds = info.get("all_seeds") or []
    for i, path in enumerate(output_paths(Path(args.output), len(images))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(images[i])
        print(f"{path}\tseed {seeds[i] if i < len(seeds) else '?'}")
    return 0

"""`sdedge serve` and friends: the command line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

from service.cli import build_engines as cli_build_engines
from service.cli import generate as cli_generate

log = logging.getLogger("sdedge")

DEFAULT_MODELS_DIR = Path("models")
DEFAULT_GRPC_PORT = 50051


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file() and not (
        path / "unet" / "model.onnx"
    ).is_file()


def prepare_model(path: Path, models_dir: Path) -> Path:
    """A bundle is used as is; a diffusers folder is exported to `models_dir/<name>` first (needs `export`)."""
    from engine.bundle import is_bundle

    if is_bundle(path):
        return path
    if _is_diffusers_folder(path):
        out = models_dir / path.name
        if is_bundle(out):
            return out
        try:
            from export.onnx_export import export_diffusers_folder
        except ImportError as exc:
            raise SystemExit(f"{path} is a diffusers folder; exporting it needs the export extra: {exc}") from exc
        log.info("exporting %s to %s", path, out)
        return export_diffusers_folder(path, out)
    if path.is_file():
        return _prepare_single_file(path, models_dir)
    raise SystemExit(f"{path}: not an sdedge bundle, a diffusers folder or a .safetensors/.ckpt checkpoint")


def _prepare_single_file(path: Path, models_dir: Path) -> Path:
    """An A1111 checkpoint file is exported to `models_dir/<stem>`, reused while its sha256 is the same."""
    from engine.bundle import hash_files, is_bundle, load_bundle

    out = models_dir / path.stem
    if is_bundle(out) and (manifest := load_bundle(out).manifest).source_sha256 == hash_files([path]):
        # A bundle from before textual inversion has no token table: exported again where torch is installed
        # (the export extra), else kept as it is (embeddings are then listed as skipped).
        if manifest.text_token_tables or importlib.util.find_spec("torch") is None:
            return out
        log.info("%s: its bundle predates textual inversion; exporting it again", path)
    try:
        from export import single_file
    except ImportError as exc:
        raise SystemExit(f"{path} is a checkpoint file; exporting it needs the export extra: {exc}") from exc
    if not single_file.is_single_file(path):
        raise SystemExit(f"{path}: not a checkpoint file ({', '.join(sorted(single_file.SUFFIXES))})")
    log.info("exporting %s to %s", path, out)
    try:
        return single_file.export_single_file(path, out)
    except single_file.SingleFileError as exc:
        raise SystemExit(f"{path}: {exc}") from exc
    except ImportError as exc:  # torch/diffusers are imported only when a file is converted
        raise SystemExit(f"{path} is a checkpoint file; exporting it needs the export extra: {exc}") from exc


def serve(args: argparse.Namespace) -> int:
    from engine.backend import BackendChoice
    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    try:
        BackendChoice(args.backend, args.precision)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    models_dir = Path(args.models_dir)
    if args.vae_path and not Path(args.vae_path).is_file():
        raise SystemExit(f"--vae-path {args.vae_path}: no such file")
    model = prepare_model(Path(args.model), models_dir) if args.model else None
    config = ServerConfig(
        model=model, models_dir=models_dir, providers=args.providers, max_queue=args.max_queue,
        backend=args.backend, precision=args.precision,
        options_file=Path(args.options_file) if args.options_file else None,
        cors_allow_origins=args.cors_allow_origins, cors_allow_origins_regex=args.cors_allow_origins_regex,
        api_auth=args.api_auth, api_log=args.api_log, host=args.host, port=args.port, listen=args.listen,
        upscalers_dir=Path(args.upscalers_dir) if args.upscalers_dir else models_dir / "upscalers",
        lora_dirs=[Path(args.lora_dir) if args.lora_dir else models_dir / "Lora", models_dir / "LyCORIS"],
        embeddings_dirs=[Path(args.embeddings_dir) if args.embeddings_dir else models_dir / "embeddings"],
        face_restorers_dir=(Path(args.face_restorers_dir) if args.face_restorers_dir
                            else models_dir / "face-restorers"),
        extra={"styles_file": args.styles_file or ["styles.csv"]},
        max_body_size=args.max_body_size, max_side=args.max_side,
        memory_budget=args.memory_budget,
        job_timeout=args.job_timeout, api_server_stop=args.api_server_stop,
        vae_dirs=[Path(d) for d in args.vae_dir or []], vae_path=Path(args.vae_path) if args.vae_path else None,
        data_dir=Path(args.data_dir),
        local_images_dir=Path(args.allow_local_images).resolve() if args.allow_local_images else None,
        log_format=args.log_format, drain_timeout=args.drain_timeout,
        batch_max=args.batch_max, batch_window_ms=args.batch_window_ms,
        workers=args.workers,
    )
    if args.api_auth:
        from service.http.auth import parse_credentials

        try:
            parse_credentials(args.api_auth)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    if getattr(args, "ray", False):  # every Ray Serve replica runs this configuration (service/scale/, docs/scale-out.md)
        from service.scale.cli import serve_on_ray

        return serve_on_ray(config, args)
    state = ServerState(config)
    state.vaes.prebuild(state.models.entries())  # VAE files → ONNX in the background (service/runtime/vae.py)
    host = "0.0.0.0" if args.listen else args.host
    grpc_server = start_grpc(state, host, args)  # before loading: health says NOT_SERVING meanwhile
    try:
        entry, pipeline = state.load_default()
        log.info("model %s on %s", entry.title, ", ".join(pipeline.backend.providers))
        app = create_app(state)
        server = _draining_server(state, app, host, args, grpc_server)
        # /sdapi/v1/server-stop: uvicorn's own graceful exit (a signal would be re-raised: exit status -15).
        app.state.stop_server = lambda: setattr(server, "should_exit", True)
        server.run()
    finally:
        if grpc_server is not None:
            grpc_server.stop()
    return 0


def _draining_server(state, app, host: str, args: argparse.Namespace, grpc_server):
    """uvicorn whose SIGTERM/SIGINT drains first (service/runtime/drain.py); with --log-format json, uvicorn's
    own lines go through the root JSON handler and sdedge's access log replaces uvicorn's."""
    import uvicorn

    from service.http.drain_gate import DrainingServer
    from service.runtime.drain import Drain

    json_logs = args.log_format == "json"
    extra = {"log_config": None, "access_log": False} if json_logs else {}
    server = DrainingServer(uvicorn.Config(app, host=host, port=args.port, log_level="info", timeout_keep_alive=30,
                                           timeout_graceful_shutdown=10,
                                           **extra))
    server.drain = Drain(state, args.drain_timeout, on_done=lambda: setattr(server, "should_exit", True),
                         on_begin=grpc_server.begin_drain if grpc_server is not None else None)
    return server


def gate(args: argparse.Namespace) -> int:
    """`sdedge gate`: engine/quality_gate.py on one variant; exit status 1 when the gate fails."""
    from dataclasses import asdict

    from engine.backend import BackendChoice
    from engine.bundle import load_bundle
    from engine.quality_gate import record, run_gate

    choice = BackendChoice(args.backend, args.precision, args.threads)
    result = run_gate(load_bundle(args.model), choice, args.samples, args.size, args.steps, args.threads)
    record(args.model, result)
    print(json.dumps(asdict(result), indent=2))
    return 0 if result.passed else 1


def start_grpc(state, host: str, args: argparse.Namespace):
    """The gRPC server, or None when disabled. A busy default port only warns: REST users need no gRPC."""
    from service.rpc.server import GrpcConfig, GrpcServer, MiB

    port = DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port
    if port == 0:
        return None
    config = GrpcConfig(host=host, port=port, max_message_bytes=int(args.grpc_max_message_mb * MiB))
    server = GrpcServer(state, config)
    try:
        server.start()
    except OSError as exc:
        if args.grpc_port is not None:
            raise SystemExit(f"{exc}; pass another --grpc-port, or 0 to disable gRPC") from None
        log.warning("%s: serving without gRPC (pass --grpc-port to choose a port)", exc)
        return None
    return server


def _memory_budget(text: str) -> int:
    from service.runtime.admission import parse_budget

    try:
        return parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30}


def byte_size(text: str) -> int:
    """`64MiB`, `200MB`, `1g`, `1048576` → bytes (argparse type)."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MiB, 200MB, 1GiB)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return int(value)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdedge", description="Stable Diffusion server speaking the A1111 API")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the sdapi over HTTP")
    s.add_argument("--model", help="an sdedge bundle, or a diffusers folder or A1111 .safetensors/.ckpt "
                   "SD 1.x checkpoint (exported into --models-dir first)")
    s.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), help="folder of bundles (default: models)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--listen", action="store_true", help="bind 0.0.0.0")
    s.add_argument("--providers", default="cpu", help="cpu, cuda, tensorrt (ONNX Runtime execution providers)")
    s.add_argument("--backend", default="auto", choices=["ort", "openvino", "auto"],
                   help="runtime: ONNX Runtime, OpenVINO (extra `openvino`), or auto (default): the fastest variant "
                        "whose quality gate recorded in the bundle passed (`sdedge gate`); ONNX Runtime fp32 when "
                        "none is recorded or with GPU --providers. `ort` for A1111's CPU results bit for bit")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="inference precision; bf16 needs --backend openvino (a CPU with avx512_bf16/AMX)")
    s.add_argument("--max-queue", type=int, default=64, help="jobs that may wait; more get 503")
    s.add_argument("--options-file", default="config.json", help="where options are persisted")
    s.add_argument("--cors-allow-origins", default=None)
    s.add_argument("--cors-allow-origins-regex", default=None)
    s.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER:PASS...]",
                   help="HTTP Basic auth on the API (A1111's --api-auth)")
    s.add_argument("--styles-file", action="append", default=None, metavar="PATH",
                   help="styles CSV (repeatable, wildcards allowed; default ./styles.csv)")
    s.add_argument("--api-log", action="store_true", help="log every /sdapi request (A1111's --api-log)")
    s.add_argument("--upscalers-dir", default=None,
                   help="folder of ONNX upscaler models for extras (default: <models-dir>/upscalers)")
    s.add_argument("--lora-dir", default=None,
                   help="folder of LoRA/LyCORIS files (.safetensors, .pt, .ckpt), searched recursively (default: "
                   "<models-dir>/Lora; <models-dir>/LyCORIS is searched too)")
    s.add_argument("--embeddings-dir", default=None,
                   help="folder of textual-inversion embeddings (.pt, .bin, .safetensors, PNG), searched "
                   "recursively (default: <models-dir>/embeddings)")
    s.add_argument("--face-restorers-dir", default=None,
                   help="folder of face-restoration ONNX models for restore_faces: a RetinaFace detector "
                        "(*retinaface*.onnx) and GFPGAN/CodeFormer exports (default: <models-dir>/face-restorers)")
    s.add_argument("--grpc-port", type=int, default=None,
                   help=f"gRPC port (default {DEFAULT_GRPC_PORT}, skipped with a warning if busy; 0 disables gRPC)")
    s.add_argument("--grpc-max-message-mb", type=float, default=64, help="gRPC max message size (default 64 MiB)")
    s.add_argument("--memory-budget", type=_memory_budget, default=None, metavar="BYTES",
                   help="memory one job may use on top of the loaded model, e.g. 12G or 512M; larger jobs get "
                   "413 (default: 75%% of RAM, at most what is available at start)")
    s.add_argument("--job-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="deadline of a running job: interrupted and failed (504) when it passes; 0 = none; "
                   "option sdedge_job_timeout overrides it (default 3600)")
    s.add_argument("--api-server-stop", action="store_true",
                   help="enable /sdapi/v1/server-kill, /server-restart and /server-stop (A1111's flag)")
    s.add_argument("--max-body-size", type=byte_size, default="64MiB", metavar="SIZE",
                   help="largest HTTP request body, e.g. 64MiB, 200MB, 1GiB or bytes (default 64MiB); more is a 413")
    s.add_argument("--max-side", type=int, default=4096, metavar="PX",
                   help="largest width/height a request may ask for, hires result included (default 4096)")
    s.add_argument("--vae-dir", action="append", default=None, metavar="DIR",
                   help="another folder of VAE files (repeatable), beside <models-dir>/VAE (A1111's flag)")
    s.add_argument("--vae-path", default=None, metavar="FILE",
                   help="use this VAE file for every checkpoint, whatever option sd_vae says (A1111's flag)")
    s.add_argument("--data-dir", default=".", metavar="DIR",
                   help="root of the output folders: images saved with save_images go to the outdir_* options "
                   "under it and never outside it (default: the working folder, as A1111)")
    s.add_argument("--allow-local-images", default=None, metavar="DIR",
                   help="let init_images/mask name image files inside DIR on the server (default: refused, 403)")
    s.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text, or json: one JSON object per line with task_id on access and job lines")
    s.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT: refuse new work (503), finish running and queued jobs for up to this "
                   "long, answer what is left with 503, exit 0; a second signal forces (default 60)")
    s.add_argument("--batch-max", type=int, default=1, metavar="IMAGES",
                   help="run waiting txt2img jobs that differ only in seed as one batch of up to this many images, "
                   "each with the images it gets alone (default 1: off)")
    s.add_argument("--batch-window-ms", type=float, default=0.0, metavar="MS",
                   help="with --batch-max: how long a job waits for compatible jobs to arrive (default 0: batch only "
                   "jobs already waiting; a lone job is never delayed by more than this)")
    from service.scale.cli import add_arguments as add_ray_arguments  # no ray import: only the flags

    add_ray_arguments(s)
    s.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="jobs run at once on the loaded models, each ONNX Runtime session with cores/N threads "
                   "(default 1: one job at a time, ORT's own thread count)")
    s.set_defaults(func=serve)
    q = sub.add_parser("gate", help="measure a backend/precision variant against ONNX Runtime fp32 and record the "
                       "result in the bundle's manifest (read by --backend auto)")
    q.add_argument("--model", required=True, help="an sdedge bundle")
    q.add_argument("--backend", default="openvino", choices=["ort", "openvino"])
    q.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    q.add_argument("--samples", type=int, default=8, help="prompts/seeds (default 8)")
    q.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    q.add_argument("--steps", type=int, default=4)
    q.add_argument("--threads", type=int, default=0)
    q.set_defaults(func=gate)
    b = sub.add_parser("build-engines", help="build the UNet's TensorRT engines for this GPU ahead of time "
                       "(read by --providers tensorrt), with a progress bar")
    cli_build_engines.add_arguments(b)
    b.set_defaults(func=cli_build_engines.run)
    g = sub.add_parser("generate", help="txt2img on a running server (gRPC or REST), with a progress bar")
    cli_generate.add_arguments(g)
    g.set_defaults(func=cli_generate.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from service.runtime.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_format", "text"))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

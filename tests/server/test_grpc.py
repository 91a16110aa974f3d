"""The gRPC front door over real loopback: same queue and same bytes as REST, streaming progress, deadlines,
health, reflection, status codes, auth, the documented client example."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from engine.samplers import SAMPLERS
from engine.schedules import SCHEDULERS
from service.a1111.infotext import parse_infotext
from service.a1111.sdapi_models import Img2ImgRequest, Txt2ImgRequest
from service.cli.client import SdEdgeClient
from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from service.rpc import convert as grpc_convert
from service.rpc.convert import to_sdapi
from service.rpc.server import GrpcConfig, GrpcServer
from service.runtime.jobs import Job, JobCancelled, JobState
from service.runtime.state import ServerConfig, ServerState
from tests.sdapi_server import running_server

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 64, "height": 64, "steps": 3}


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(demo_bundle, tmp_path_factory):
    """`sdedge serve` in a subprocess: REST and gRPC from one process, as deployed."""
    with running_server(demo_bundle, tmp_path_factory.mktemp("grpc-server"), second_model=False, grpc=True) as pair:
        yield pair


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(served[1]) as channel:
        yield pb_grpc.SdEdgeStub(channel)


def hold_worker(state: ServerState, **progress) -> tuple[Job, threading.Event]:
    """Occupy the worker until the returned event is set; `progress` fields are reported while it waits."""
    started, release = threading.Event(), threading.Event()

    def run(job: Job):
        for key, value in progress.items():
            setattr(job.progress, key, value)
        started.set()
        release.wait(30)

    job = state.queue.submit(Job(kind="hold", run=run))
    assert started.wait(10)
    return job, release


# -- schema and stubs ---------------------------------------------------------------------------------------------


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    committed = ROOT / "service" / "generated"
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), f"{name}: run `make proto`"


@pytest.mark.parametrize(("message", "model"), [(pb.Txt2ImgRequest, Txt2ImgRequest),
                                                 (pb.Img2ImgRequest, Img2ImgRequest)])
def test_requests_carry_every_sdapi_field_and_unset_means_default(message, model):
    assert set(message.DESCRIPTOR.fields_by_name) == set(model.model_fields)
    assert to_sdapi(message(), model).model_dump() == model().model_dump()
    # Presence: zero and empty values a client sets are kept, not mistaken for "unset".
    explicit = to_sdapi(message(seed_resize_from_w=0, prompt="", seed=0, cfg_scale=0.0, send_images=False), model)
    assert (explicit.seed_resize_from_w, explicit.prompt, explicit.seed, explicit.cfg_scale,
            explicit.send_images) == (0, "", 0, 0.0, False)


def test_structs_and_image_bytes_convert_to_the_sdapi_json_forms():
    request = pb.Img2ImgRequest(init_images=[b"\x89PNG-a", b"\x89PNG-b"], mask=b"mask")
    request.override_settings.update({"CLIP_stop_at_last_layers": 2, "samples_format": "png", "s_noise": 0.5})
    request.script_args.extend([1, "x"])
    req = to_sdapi(request, Img2ImgRequest)
    assert req.init_images == [base64.b64encode(b"\x89PNG-a").decode(), base64.b64encode(b"\x89PNG-b").decode()]
    assert req.mask == base64.b64encode(b"mask").decode()
    assert req.override_settings == {"CLIP_stop_at_last_layers": 2, "samples_format": "png", "s_noise": 0.5}
    assert type(req.override_settings["CLIP_stop_at_last_layers"]) is int
    assert req.script_args == [1, "x"]


def test_mask_images_get_no_seed_or_infotext_and_do_not_shift_the_others():
    # return_mask / return_mask_composite put extra images after each generated one (A1111
    # modules/processing.py: process_images_inner).
    response = {"images": [b"\x89PNG-0", b"\x89PNG-m0", b"\x89PNG-1", b"\x89PNG-m1"],
                "image_sources": [0, None, 1, None]}
    info = {"all_seeds": [5, 6], "all_subseeds": [7, 8], "infotexts": ["zero", "one"], "index_of_first_image": 0}
    images = grpc_convert.images(response, info)
    assert [(im.index, im.seed, im.subseed, im.infotext) for im in images] == [
        (0, 5, 7, "zero"), (1, 0, 0, ""), (2, 6, 8, "one"), (3, 0, 0, "")]


# -- generation over the wire -------------------------------------------------------------------------------------


def test_unary_txt2img(stub):
    r = stub.Txt2Img(pb.Txt2ImgRequest(prompt="a red circle", negative_prompt="blurry", seed=1234, steps=3,
                                       width=72, height=136), timeout=60)
    assert len(r.images) == 1 and r.task_id.startswith("task(txt2img-")
    image = r.images[0]
    assert image.mime_type == "image/png" and image.seed == 1234
    pil = Image.open(io.BytesIO(image.data))
    assert pil.format == "PNG" and pil.size == (72, 136)
    assert pil.info["parameters"] == image.infotext
    parsed = parse_infotext(image.infotext)
    assert parsed["Prompt"] == "a red circle" and parsed["Negative prompt"] == "blurry"
    assert parsed["Seed"] == "1234" and parsed["Steps"] == "3" and parsed["Sampler"] == "Euler"
    info = json.loads(r.info_json)
    assert (r.info.seed, r.info.width, r.info.height, r.info.steps) == (1234, 72, 136, 3)
    assert list(r.info.infotexts) == info["infotexts"] == [image.infotext]
    # Unset fields took A1111's API defaults, as a REST body without those keys does.
    params = json_format.MessageToDict(r.parameters)
    assert params["cfg_scale"] == 7.0 and params["sampler_index"] == "Euler" and params["n_iter"] == 1
    assert r.info.cfg_scale == 7.0 and r.info.sampler_name == "Euler"


def test_same_request_over_rest_and_grpc_gives_identical_bytes(served, stub):
    body = {"prompt": "same bytes", "seed": 11, "sampler_name": "Euler a", "batch_size": 2,
            "override_settings": {"CLIP_stop_at_last_layers": 2}, **SMALL}
    rest = requests.post(f"{served[0]}/sdapi/v1/txt2img", json=body, timeout=60)
    assert rest.status_code == 200, rest.text
    rest = rest.json()
    request = pb.Txt2ImgRequest(**{k: v for k, v in body.items() if k != "override_settings"})
    request.override_settings.update(body["override_settings"])
    r = stub.Txt2Img(request, timeout=60)
    assert [i.data for i in r.images] == [base64.b64decode(b) for b in rest["images"]]
    assert len(r.images) == 2
    assert list(r.info.infotexts) == json.loads(rest["info"])["infotexts"]
    assert "Clip skip: 2" in r.images[0].infotext


def test_generate_streams_progress_in_step_order_then_images_then_done(stub):
    txt = pb.Txt2ImgRequest(prompt="stream", seed=5, n_iter=2, **SMALL)
    events = list(stub.Generate(pb.GenerateRequest(txt2img=txt, preview_every_n_steps=2), timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["queued"] + ["progress"] * 6 + ["image"] * 2 + ["done"]
    assert len({e.task_id for e in events}) == 1
    progress = [e.progress for e in events if e.HasField("progress")]
    assert [(p.job_no, p.sampling_step) for p in progress] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert all(p.sampling_steps == 3 and p.job_count == 2 for p in progress)
    fractions = [p.progress for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [p.HasField("preview") for p in progress] == [False, True, False, False, True, False]
    preview = Image.open(io.BytesIO(progress[1].preview.data))
    assert preview.format == "PNG" and preview.size == (8, 8)  # "Approx cheap": one pixel per latent
    images = [e.image for e in events if e.HasField("image")]
    done = events[-1].done
    assert [i.seed for i in images] == [5, 6] == list(done.info.all_seeds)
    assert not done.interrupted
    unary = stub.Txt2Img(txt, timeout=60)
    assert [i.data for i in images] == [i.data for i in unary.images]


def test_bad_width_is_invalid_argument_naming_the_field_and_server_keeps_serving(stub):
    for request, field in [(pb.Txt2ImgRequest(width=100, steps=1), "width"),
                           (pb.Txt2ImgRequest(steps=0), "steps"),
                           (pb.Txt2ImgRequest(steps=1, width=64, height=64,
                                              override_settings={"no_such_option": 1}), "override_settings")]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Txt2Img(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}:"), err.value.details()
    for request, field in [(pb.GenerateRequest(txt2img=pb.Txt2ImgRequest(width=100)), "width"),
                           (pb.GenerateRequest(), "request")]:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}:"), err.value.details()
    assert len(stub.Txt2Img(pb.Txt2ImgRequest(steps=1, width=64, height=64), timeout=30).images) == 1


def test_unary_img2img_gives_the_rest_bytes(served, stub):
    init = stub.Txt2Img(pb.Txt2ImgRequest(prompt="init", seed=3, **SMALL), timeout=60).images[0].data
    body = {"prompt": "img2img", "seed": 21, "denoising_strength": 0.5, "steps": 4, "width": 64, "height": 64}
    r = stub.Img2Img(pb.Img2ImgRequest(init_images=[init], **body), timeout=60)
    rest = requests.post(f"{served[0]}/sdapi/v1/img2img",
                         json={**body, "init_images": [base64.b64encode(init).decode()]}, timeout=60)
    assert rest.status_code == 200, rest.text
    assert len(r.images) == 1 and r.task_id.startswith("task(img2img-")
    assert [i.data for i in r.images] == [base64.b64decode(b) for b in rest.json()["images"]]
    assert r.images[0].data != init and Image.open(io.BytesIO(r.images[0].data)).size == (64, 64)
    assert r.info.denoising_strength == 0.5 and r.images[0].seed == 21
    assert parse_infotext(r.images[0].infotext)["Denoising strength"] == "0.5"
    assert json_format.MessageToDict(r.parameters)["init_images"] is None  # include_init_images defaults false


def test_generate_img2img_streams_its_steps(stub, served):
    init = stub.Txt2Img(pb.Txt2ImgRequest(prompt="init", seed=3, **SMALL), timeout=60).images[0].data
    img = pb.Img2ImgRequest(init_images=[init], prompt="x", seed=2, denoising_strength=0.5, steps=6, width=64,
                            height=64)
    events = list(stub.Generate(pb.GenerateRequest(img2img=img), timeout=60))
    steps = [e.progress.sampling_step for e in events if e.HasField("progress")]
    assert steps == list(range(1, len(steps) + 1)) and 2 <= len(steps) <= 4  # ~strength × steps
    assert events[-2].image.data == stub.Img2Img(img, timeout=60).images[0].data


def test_img2img_without_init_images_is_a1111s_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Img2Img(pb.Img2ImgRequest(steps=1), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "Init image not found"
    with pytest.raises(grpc.RpcError) as err:
        stub.Img2Img(pb.Img2ImgRequest(init_images=[b"not an image"], steps=1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("init_images[0]:")


# -- queue, deadlines, cancellation -------------------------------------------------------------------------------


def test_deadline_while_queued_removes_the_job_and_the_queue_moves_on(grpc_in_process):
    state, stub, _ = grpc_in_process
    holder, release = hold_worker(state)
    try:
        call = stub.Txt2Img.future(pb.Txt2ImgRequest(prompt="late", force_task_id="task(grpc-late)", **SMALL),
                                   timeout=0.5)
        assert wait_until(lambda: state.queue.get("task(grpc-late)") is not None)
        job = state.queue.get("task(grpc-late)")
        assert call.exception(timeout=10).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: job.state == JobState.CANCELLED)
        assert job not in state.queue.pending()
        assert isinstance(job.future.exception(), JobCancelled)
    finally:
        release.set()
    assert wait_until(lambda: holder.state == JobState.DONE)
    r = stub.Txt2Img(pb.Txt2ImgRequest(prompt="next", **SMALL), timeout=60)
    assert len(r.images) == 1
    assert job.progress.sampling_step == 0  # the cancelled job never ran


def test_deadline_while_running_interrupts_at_the_next_step(grpc_in_process):
    state, stub, _ = grpc_in_process
    call = stub.Txt2Img.future(pb.Txt2ImgRequest(prompt="long", force_task_id="task(grpc-long)", steps=1000,
                                                 width=64, height=64), timeout=2.0)
    assert wait_until(lambda: state.queue.get("task(grpc-long)") is not None)
    job = state.queue.get("task(grpc-long)")
    assert call.exception(timeout=10).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    result = job.future.result(timeout=5)  # well before 1000 steps would finish
    assert result.interrupted and job.interrupted
    assert 0 < job.progress.sampling_step < 1000


def test_client_cancelling_the_stream_removes_its_queued_job(grpc_in_process):
    state, stub, _ = grpc_in_process
    holder, release = hold_worker(state)
    try:
        stream = stub.Generate(pb.GenerateRequest(txt2img=pb.Txt2ImgRequest(prompt="bye", **SMALL)), timeout=30)
        first = next(stream)
        assert first.queued.position == 1  # behind the running holder
        job = state.queue.get(first.task_id)
        stream.cancel()
        assert wait_until(lambda: job.state == JobState.CANCELLED)
        assert job not in state.queue.pending()
    finally:
        release.set()


def test_full_queue_is_resource_exhausted(grpc_in_process, monkeypatch):
    state, stub, _ = grpc_in_process
    monkeypatch.setattr(state.queue, "max_pending", 1)
    holder, release = hold_worker(state)
    waiting = state.queue.submit(Job(kind="wait", run=lambda job: None))
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Txt2Img(pb.Txt2ImgRequest(**SMALL), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
    assert waiting.future.result(timeout=10) is None


def test_progress_interrupt_skip(grpc_in_process):
    state, stub, _ = grpc_in_process
    holder, release = hold_worker(state, job_no=1, job_count=2, sampling_step=5, sampling_steps=10)
    queued = state.queue.submit(Job(kind="wait", run=lambda job: None))
    try:
        p = stub.GetProgress(pb.GetProgressRequest(skip_current_image=True), timeout=5)
        # A1111 modules/api/api.py: Api.progressapi: 0.01 + job_no/job_count + (1/job_count)·step/steps
        assert p.progress == pytest.approx(0.01 + 1 / 2 + 0.5 * 5 / 10)
        assert (p.state.job_no, p.state.job_count, p.state.sampling_step, p.state.sampling_steps) == (1, 2, 5, 10)
        assert p.task_id == holder.id and p.queue_length == 1
        stub.Interrupt(pb.InterruptRequest(task_id=queued.id), timeout=5)
        assert queued.state == JobState.CANCELLED
        with pytest.raises(grpc.RpcError) as err:
            stub.Interrupt(pb.InterruptRequest(task_id="task(nope)"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        stub.Skip(pb.SkipRequest(), timeout=5)
        assert holder.skipped and not holder.interrupted
        stub.Interrupt(pb.InterruptRequest(), timeout=5)
        assert holder.interrupted
    finally:
        release.set()
    assert wait_until(lambda: state.queue.current is None)
    idle = stub.GetProgress(pb.GetProgressRequest(), timeout=5)
    assert idle.progress == 0 and idle.state.job_count == 0 and idle.task_id == ""


# -- health, reflection, limits, auth -----------------------------------------------------------------------------


def test_health_reports_serving_once_a_model_is_loaded(demo_bundle, tmp_path):
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp_path))
    server = GrpcServer(state, GrpcConfig(port=0))
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str = ""):
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
            state.load_default()
            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
            assert status("sdedge.v1.SdEdge") == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=None)
        state.close()


def test_without_a_model_health_is_not_serving_and_generation_unavailable(tmp_path):
    state = ServerState(ServerConfig(models_dir=tmp_path))
    server = GrpcServer(state, GrpcConfig(port=0))
    port = server.start()
    try:
        with SdEdgeClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as err:
                client.txt2img("x", **SMALL)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert client.models() == []
    finally:
        server.stop(grace=None)
        state.close()


def test_reflection_lists_the_service(served):
    with grpc.insecure_channel(served[1]) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"sdedge.v1.SdEdge", "grpc.health.v1.Health"} <= services
        file = db.FindFileContainingSymbol("sdedge.v1.SdEdge")
        assert file.package == "sdedge.v1"
        assert "Generate" in [m.name for s in file.service for m in s.method]


def test_messages_over_4_mib_pass(served):
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG", compress_level=0)
    assert out.tell() > 5 * 1024 * 1024
    with SdEdgeClient(served[1], timeout=30) as client:
        assert client.png_info(out.getvalue())["info"] == ""


def test_api_auth_through_metadata(demo_bundle, tmp_path):
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp_path, api_auth="alice:s3cret,bob:pw"))
    server = GrpcServer(state, GrpcConfig(port=0))
    port = server.start()
    target = f"127.0.0.1:{port}"
    try:
        for auth, problem in [(None, "Not authenticated"), ("alice:wrong", "Incorrect username or password"),
                              ("carol:s3cret", "Incorrect username or password")]:
            with SdEdgeClient(target, auth=auth, timeout=5) as client, pytest.raises(grpc.RpcError) as err:
                client.models()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and err.value.details() == problem
        with SdEdgeClient(target, timeout=5) as client, pytest.raises(grpc.RpcError) as err:
            list(client.events(pb.GenerateRequest(txt2img=pb.Txt2ImgRequest(**SMALL))))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with SdEdgeClient(target, auth="bob:pw", timeout=5) as client:
            assert [m.model_name for m in client.models()] == ["sdedge-tiny"]
        with SdEdgeClient(target, timeout=5) as client:
            assert client.health() == "NOT_SERVING"  # probes need no credentials
    finally:
        server.stop(grace=None)
        state.close()


# -- listings, options, png-info ----------------------------------------------------------------------------------


def test_listings_and_options_match_rest(served):
    url, target = served
    with SdEdgeClient(target, timeout=10) as client:
        models = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in client.models()]
        rest_models = requests.get(f"{url}/sdapi/v1/sd-models", timeout=10).json()
        assert models == [{k: v for k, v in m.items() if v is not None} for m in rest_models]
        samplers = client.samplers()
        assert [s.name for s in samplers] == list(SAMPLERS)
        euler_a = next(s for s in samplers if s.name == "Euler a")
        assert "k_euler_a" in euler_a.aliases and euler_a.options["uses_ensd"] == "True"  # stringified, as A1111
        assert [s.name for s in client.schedulers()] == list(SCHEDULERS)
        options = client.options()
        assert options == requests.get(f"{url}/sdapi/v1/options", timeout=10).json()
        client.set_options({"jpeg_quality": 91})
        assert requests.get(f"{url}/sdapi/v1/options", timeout=10).json()["jpeg_quality"] == 91
        for bad, code in [({"no_such_option": 1}, grpc.StatusCode.INVALID_ARGUMENT),
                          ({"samples_format": "bmp"}, grpc.StatusCode.INVALID_ARGUMENT),
                          ({"sd_model_checkpoint": "missing"}, grpc.StatusCode.NOT_FOUND)]:
            with pytest.raises(grpc.RpcError) as err:
                client.set_options(bad)
            assert err.value.code() == code


def test_png_info_reads_the_infotext_back(served):
    with SdEdgeClient(served[1], timeout=60) as client:
        image = client.txt2img("png info", seed=77, **SMALL).images[0]
        info = client.png_info(image.data)
        assert info["info"] == image.infotext
        assert info["parameters"]["Seed"] == "77" and info["parameters"]["Prompt"] == "png info"
        rest = requests.post(f"{served[0]}/sdapi/v1/png-info",
                             json={"image": base64.b64encode(image.data).decode()}, timeout=30)
        assert info == rest.json()
        with pytest.raises(grpc.RpcError) as err:
            client.png_info(b"not an image")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- docs and command line ----------------------------------------------------------------------------------------


def _doc_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "grpc.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_docs_python_client_example_runs(served, tmp_path):
    (example,) = _doc_blocks("python")
    assert "127.0.0.1:50051" in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("127.0.0.1:50051", served[1]), encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "SERVING"
    assert "steps [1, 2, 3, 4] seeds [42]" in run.stdout
    assert Image.open(tmp_path / "lighthouse.png").info["parameters"].startswith("a lighthouse at dusk")


def test_docs_grpcurl_request_is_a_valid_txt2img(stub):
    (shell,) = _doc_blocks("sh")[:1]
    body = re.search(r"-d '(\{\"prompt\".*?\})'", shell).group(1)
    request = json_format.Parse(body, pb.Txt2ImgRequest())
    r = stub.Txt2Img(request, timeout=60)
    assert r.info.seed == 42 and len(r.images) == 1


@pytest.mark.parametrize("door", ["grpc", "url"])
def test_cli_generate_writes_the_images(served, tmp_path, door):
    target = served[1] if door == "grpc" else served[0]
    out = tmp_path / "out.png"
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "generate", "cli prompt", f"--{door}", target, "-o", str(out),
         "--steps", "3", "--width", "64", "--height", "64", "--seed", "9", "--batch-size", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    paths = [tmp_path / "out-0.png", tmp_path / "out-1.png"]
    seeds = [parse_infotext(Image.open(p).info["parameters"])["Seed"] for p in paths]
    assert seeds == ["9", "10"]
    assert "sampling" in run.stderr  # the progress bar


def test_cli_generate_reports_a_bad_field(served, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "generate", "x", "--grpc", served[1], "-o", str(tmp_path / "o.png"),
         "--width", "65"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 1 and "INVALID_ARGUMENT: width:" in run.stderr


def test_grpc_port_flag_zero_disables_and_a_busy_port_is_refused_unless_defaulted(tmp_path, monkeypatch, caplog):
    import argparse

    from service.cli import commands as cli

    state = ServerState(ServerConfig(models_dir=tmp_path))
    taken = GrpcServer(state, GrpcConfig(port=0))
    busy = taken.start()
    try:
        args = argparse.Namespace(grpc_port=0, grpc_max_message_mb=64)
        assert cli.start_grpc(state, "127.0.0.1", args) is None
        with pytest.raises(SystemExit, match="cannot bind gRPC"):
            cli.start_grpc(state, "127.0.0.1", argparse.Namespace(grpc_port=busy, grpc_max_message_mb=64))
        monkeypatch.setattr(cli, "DEFAULT_GRPC_PORT", busy)
        assert cli.start_grpc(state, "127.0.0.1", argparse.Namespace(grpc_port=None, grpc_max_message_mb=64)) is None
        assert "serving without gRPC" in caplog.text
    finally:
        taken.stop(grace=None)
        state.close()


def test_xyz_plot_script_over_grpc_gives_the_rest_bytes(served, stub):
    """script_name / script_args (a ListValue) pass through the converter unchanged: the X/Y/Z plot's grid
    and cells over gRPC are the REST bytes."""
    args = [4, "1-2", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    body = {"prompt": "grid", "seed": 5, "script_name": "x/y/z plot", "script_args": args, **SMALL}
    rest = requests.post(f"{served[0]}/sdapi/v1/txt2img", json=body, timeout=120)
    assert rest.status_code == 200, rest.text
    request = pb.Txt2ImgRequest(prompt="grid", seed=5, script_name="x/y/z plot", **SMALL)
    request.script_args.extend(args)
    r = stub.Txt2Img(request, timeout=120)
    assert [i.data for i in r.images] == [base64.b64decode(b) for b in rest.json()["images"]]
    assert len(r.images) == 3 and "Script: X/Y/Z plot" in r.images[0].infotext

"""Requests an attacker would send, against a running server: each is a quick 4xx in A1111's error shape, and the
server answers a normal request right after (issue 12: none of these may take the process or its worker down).

Before the limits, the nested-bracket prompt killed the process ("Cannot recover from stack overflow", 147 s,
5.2 GB), `s_churn: -1e200` and `seed_resize_from_w: 17179869183` were 500s (OverflowError, a 30.9 TiB
MemoryError), `"steps": 1e400` made the 422 handler itself fail, and a 100 MB body was read whole.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest
import requests
from PIL import Image

from service.a1111.sdapi_models import LIMITS, Img2ImgRequest, Txt2ImgRequest
from service.generated import sdedge_pb2 as pb
from service.generated import sdedge_pb2_grpc as pb_grpc
from tests.sdapi_server import FAST, png_b64, running_server

QUICK = 10.0  # seconds: every refusal must come well within this, on a loaded 2-core CI machine too
MiB = 1024 * 1024

TXT2IMG_NUMBERS = [
    "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w", "batch_size", "n_iter",
    "steps", "cfg_scale", "width", "height", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax",
    "s_tmin", "s_noise", "refiner_switch_at", "firstphase_width", "firstphase_height", "hr_scale",
    "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
]
IMG2IMG_NUMBERS = [
    "denoising_strength", "resize_mode", "image_cfg_scale", "mask_blur_x", "mask_blur_y", "mask_blur",
    "inpainting_fill", "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier",
]
# Raw JSON number tokens: the first two are valid JSON doubles, the others parse to ±inf / NaN in Python.
HUGE = ["1e308", "-1e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity"]
NESTED = {
    "[": "[" * 2000 + "a:b:0.5" + "]" * 2000,  # the prompt
    "(": "(" * 2000 + "a" + ")" * 2000,
    "[a|": "[a|" * 2000 + "b" + "]" * 2000,
    "unclosed": "(a]" * 2000,
}


@pytest.fixture(scope="module")
def served(demo_bundle, tmp_path_factory):
    # A 1 MiB gRPC message limit makes the oversized-message case cheap; the body limit stays the default.
    with running_server(demo_bundle, tmp_path_factory.mktemp("attack"), "--grpc-max-message-mb", "1",
                        second_model=False, grpc=True) as pair:
        yield pair


@pytest.fixture(scope="module")
def url(served):
    return served[0]


def post(url: str, route: str, data: bytes | str, **kwargs) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    response = requests.post(f"{url}/sdapi/v1/{route}", data=data, timeout=120,
                             headers={"Content-Type": "application/json"}, **kwargs)
    return response, time.perf_counter() - started


def assert_refused(response: requests.Response, elapsed: float, status: int, *needles: str) -> dict:
    assert response.status_code == status, response.text[:500]
    assert elapsed < QUICK, f"took {elapsed:.1f} s"
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    text = json.dumps(body)
    for needle in needles:
        assert needle in text, text[:1000]
    return body


def still_serving(url: str) -> None:
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a cat", **FAST}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["images"]) == 1


@pytest.mark.parametrize("kind", list(NESTED))
@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "hr_prompt"])
def test_deeply_nested_prompt_is_422_naming_the_limit(url, kind, field):
    response, elapsed = post(url, "txt2img", json.dumps({field: NESTED[kind], "enable_hr": True, **FAST}))
    assert_refused(response, elapsed, 422, field, "deep; the limit is 100")
    still_serving(url)


def test_ten_megabyte_prompt_is_422_and_not_echoed_whole(url):
    response, elapsed = post(url, "txt2img", json.dumps({"prompt": "a" * 10_000_000, **FAST}))
    assert_refused(response, elapsed, 422, "prompt", "10000000 characters long; the limit is 20000")
    assert len(response.content) < 10_000
    still_serving(url)


def test_deepest_and_longest_allowed_prompts_generate(url):
    for prompt in ["[" * 100 + "a:b:0.5" + "]" * 100, "(" * 100 + "a" + ")" * 100,
                   ("[a|b] (c:1.2) [d:e:0.5] " * 1000)[:20_000]]:
        started = time.perf_counter()
        response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": prompt, **FAST}, timeout=120)
        assert response.status_code == 200, response.text[:500]
        assert time.perf_counter() - started < 60


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_hundred_megabyte_body_is_413(url, chunked):
    body = b'{"prompt": "' + b"a" * (100 * MiB) + b'"}'
    if chunked:
        data = (body[i:i + MiB] for i in range(0, len(body), MiB))  # no Content-Length: counted as it streams
    else:
        data = body
    response, elapsed = post(url, "txt2img", data)
    assert_refused(response, elapsed, 413, "the limit is 67108864 bytes")
    still_serving(url)


@pytest.mark.parametrize("route,fields", [("txt2img", TXT2IMG_NUMBERS), ("img2img", IMG2IMG_NUMBERS)])
def test_every_numeric_field_at_huge_and_non_finite_values_is_422(url, route, fields):
    for field in fields:
        for token in HUGE:
            base = {k: v for k, v in {"prompt": "x", **FAST}.items() if k != field}
            raw = json.dumps(base)[:-1] + f', "{field}": {token}}}'
            response, elapsed = post(url, route, raw)
            body = assert_refused(response, elapsed, 422)
            assert field in body["errors"] or "non-finite" in body["errors"], (field, token, body["errors"])
        still_serving(url)


def test_seed_resize_and_sizes_over_the_side_limit_are_422(url):
    for extra, needle in [({"seed_resize_from_w": 17179869183, "seed_resize_from_h": 512}, "seed_resize_from_w"),
                          ({"width": 8192, "height": 8192}, "4096 (the server's max side"),
                          ({"enable_hr": True, "hr_resize_x": 8192}, "hr_resize_x"),
                          ({"enable_hr": True, "width": 64, "height": 4096, "hr_resize_x": 4096}, "hr_scale"),
                          ({"enable_hr": True, "hr_scale": 1e6}, "hr_scale")]:
        body = {"prompt": "x", **FAST, **extra}
        response, elapsed = post(url, "txt2img", json.dumps(body))
        assert_refused(response, elapsed, 422, needle)
        still_serving(url)


def test_huge_seeds_follow_torch_range(url):
    # A1111 hands seeds to torch.manual_seed: [-2**63, 2**64 - 1]; wider is a 422 here (a 500 there).
    for seed in (2**64, -(2**63) - 1, 10**400):
        response, elapsed = post(url, "txt2img", f'{{"prompt": "x", "steps": 1, "width": 64, "height": 64, '
                                                 f'"seed": {seed}}}')
        assert_refused(response, elapsed, 422, "seed")
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", **FAST, "seed": 2**64 - 1}, timeout=120)
    assert response.status_code == 200
    assert json.loads(response.json()["info"])["seed"] == 2**64 - 1


def test_non_finite_numbers_anywhere_and_in_options_are_4xx(url):
    for body in ['{"prompt": "x", "comments": {"a": [1, NaN]}}', '{"prompt": "x", "script_args": [Infinity]}',
                 '{"prompt": "x", "override_settings": {"s_churn": 1e400}}',
                 '{"prompt": "x", "override_settings": {"s_churn": -1e200}}',
                 '{"prompt": "x", "override_settings": {"eta_noise_seed_delta": 1e308}}']:
        response, elapsed = post(url, "txt2img", body)
        assert 400 <= response.status_code < 500, (body, response.text[:300])
        assert elapsed < QUICK
    for body in ['{"s_churn": -1e200}', '{"s_noise": Infinity}', '{"eta_ancestral": NaN}', '{"sigma_max": 1e308}']:
        response, elapsed = post(url, "options", body)
        assert 400 <= response.status_code < 500, (body, response.text[:300])
    still_serving(url)


def test_deeply_nested_json_is_4xx(url):
    response, elapsed = post(url, "txt2img", '{"comments": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert 400 <= response.status_code < 500 and elapsed < QUICK
    still_serving(url)


def test_validation_allows_what_a1111_clients_send():
    # Leniency of A1111's pydantic v1 and its legal values: negative CFG, random seeds, 2048 px, UI extremes.
    req = Txt2ImgRequest.model_validate({
        "width": 2048, "height": "2048", "steps": 150.7, "cfg_scale": -5, "seed": -1, "subseed": 4294967295,
        "seed_resize_from_w": 0, "seed_resize_from_h": -1, "s_churn": 100, "s_tmax": 999, "s_noise": 1.1, "eta": 1,
        "enable_hr": True, "hr_scale": 4, "hr_resize_x": 0, "denoising_strength": 0.7, "batch_size": 8,
        "n_iter": 8, "prompt": "(masterpiece:1.2), [cat:dog:0.5], [a|b] " * 50})
    assert (req.width, req.height, req.steps) == (2048, 2048, 150)
    Img2ImgRequest.model_validate({"mask_blur": 64, "inpaint_full_res_padding": 256, "image_cfg_scale": 1.5,
                                   "initial_noise_multiplier": 1.5, "resize_mode": 3, "inpainting_fill": 3})
    assert LIMITS.max_side == 4096


def test_attacks_through_grpc_are_invalid_argument(served):
    with grpc.insecure_channel(served[1]) as channel:
        stub = pb_grpc.SdEdgeStub(channel)
        small = {"steps": 1, "width": 64, "height": 64}
        for request, field in [(pb.Txt2ImgRequest(prompt=NESTED["["], **small), "prompt"),
                               (pb.Txt2ImgRequest(**{**small, "width": 8192}), "width"),
                               (pb.Txt2ImgRequest(s_churn=float("-inf"), **small), "s_churn"),
                               (pb.Txt2ImgRequest(seed_resize_from_w=2**31 - 1, seed_resize_from_h=64, **small),
                                "seed_resize_from_w")]:
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                stub.Txt2Img(request, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert field in err.value.details() and time.perf_counter() - started < QUICK
        with pytest.raises(grpc.RpcError) as err:  # over --grpc-max-message-mb: refused by gRPC itself
            stub.Txt2Img(pb.Txt2ImgRequest(prompt="a" * (2 * MiB), **small), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(stub.Txt2Img(pb.Txt2ImgRequest(prompt="a cat", **small), timeout=60).images) == 1


def test_422_handler_serialises_whatever_it_echoes():
    import asyncio

    from fastapi.exceptions import RequestValidationError

    from service.http.errors import _validation_error

    odd = [float("inf"), float("nan"), b"\xff\x00bytes", "x" * 10_000_000, 10**400, {"k": [float("-inf")] * 100},
           object()]
    exc = RequestValidationError([{"type": "t", "loc": ("body", "f", i), "msg": "bad", "input": v, "ctx": {"v": v}}
                                  for i, v in enumerate(odd)])
    response = asyncio.run(_validation_error(None, exc))
    assert response.status_code == 422 and len(response.body) < 20_000
    body = json.loads(response.body)  # strict JSON: no Infinity/NaN tokens
    inputs = [d["input"] for d in body["detail"]]
    assert inputs[:3] == ["inf", "nan", "\xff\x00bytes"] and inputs[3].endswith("(10000000 characters)")
    assert set(body) == {"error", "detail", "body", "errors"}


def test_png_info_and_infotext_with_deep_brackets_are_not_5xx(url):
    deep = "(" * 5000 + "cat" + ")" * 5000
    infotext = f"{deep}\nNegative prompt: {deep}\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    response, elapsed = post(url, "png-info", json.dumps({"image": png_b64(Image.new("RGB", (8, 8)),
                                                                            parameters=infotext)}))
    assert response.status_code == 200 and elapsed < QUICK
    assert response.json()["parameters"]["Emphasis"] == "Original"
    response, elapsed = post(url, "txt2img", json.dumps({"infotext": infotext, "prompt": "x", **FAST}))
    assert 200 <= response.status_code < 500 and elapsed < QUICK, response.text[:300]
    still_serving(url)


def test_task_ids_that_cannot_be_a_header_are_422(url):
    # force_task_id comes back as X-Task-Id; a control character or an edge space made h11 drop the connection.
    for task_id in ["\x06\u313c", " leading", "trailing ", "x" * 257]:
        response, elapsed = post(url, "txt2img", json.dumps({"prompt": "x", "force_task_id": task_id, **FAST}))
        assert_refused(response, elapsed, 422, "force_task_id")
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "force_task_id": "task(my id)", **FAST},
                             timeout=120)
    assert response.status_code == 200 and response.headers["X-Task-Id"] == "task(my id)"


def test_alternation_over_many_steps_is_bounded(url):
    # Every step's text of an alternating prompt is encoded: 1000 steps × 20,000 characters would be 20 M characters
    # of text-encoder input (gigabytes of embeddings); refused before the job queues, naming the limit.
    prompt = ("[cat|dog] in a field, " * 1000)[:20_000]
    response, elapsed = post(url, "txt2img", json.dumps({"prompt": prompt, "steps": 1000, "width": 64, "height": 64}))
    assert_refused(response, elapsed, 422, "prompt", "the limit is 1000000 characters in all")
    response, elapsed = post(url, "txt2img", json.dumps({"negative_prompt": prompt, "steps": 1000, "width": 64,
                                                         "height": 64}))
    assert_refused(response, elapsed, 422, "negative_prompt")
    still_serving(url)


def test_limits_are_configurable():
    from fastapi.testclient import TestClient

    from service.a1111.sdapi_models import RequestLimits, configure_limits
    from service.cli.commands import build_parser, byte_size
    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    assert (byte_size("64MiB"), byte_size("200MB"), byte_size("1g"), byte_size("4096")) == (
        64 * MiB, 200_000_000, 10**9, 4096)
    args = build_parser().parse_args(["serve", "--max-body-size", "1MiB", "--max-side", "2048"])
    assert (args.max_body_size, args.max_side) == (MiB, 2048)
    try:
        client = TestClient(create_app(ServerState(ServerConfig(max_body_size=1000, max_side=256))))
        r = client.post("/sdapi/v1/txt2img", json={"width": 512})
        assert r.status_code == 422 and "256 (the server's max side" in r.text
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a" * 2000})
        assert r.status_code == 413 and "the limit is 1000 bytes" in r.json()["detail"]
    finally:
        configure_limits(RequestLimits())
    assert LIMITS.max_side == 4096

"""`--api-auth`: HTTP Basic on every API route but A1111's exceptions, with A1111's 401 bodies; CORS still
answers preflights; `--api-log` writes A1111's line; cmd-flags never shows the credentials."""

from __future__ import annotations

import base64

import pytest
import requests
import webuiapi

from service.http.auth import check, parse_credentials
from tests.sdapi_server import FAST, running_server

ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def served(demo_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    with running_server(demo_bundle, workdir, "--api-auth", "alice:s3cret:with:colons,bob:pw", "--api-log",
                        "--cors-allow-origins", ORIGIN, second_model=False) as url:
        yield url, workdir


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def header(raw: str) -> dict[str, str]:
    return {"Authorization": raw}


def basic(userpass: str) -> dict[str, str]:
    return header("Basic " + base64.b64encode(userpass.encode()).decode())


@pytest.mark.parametrize("headers, detail", [
    ({}, "Not authenticated"),
    (header(""), "Not authenticated"),
    (header("Basic "), "Not authenticated"),
    (header("Bearer abc"), "Not authenticated"),
    (header("Basic !!!notbase64"), "Invalid authentication credentials"),
    (basic("alice"), "Invalid authentication credentials"),
    (basic("alice:wrong"), "Incorrect username or password"),
    (basic("mallory:s3cret:with:colons"), "Incorrect username or password"),
    (basic(":"), "Incorrect username or password"),
])
def test_401_without_or_with_wrong_credentials(server, headers, detail):
    for method, path in (("GET", "options"), ("GET", "sd-models"), ("POST", "txt2img"), ("GET", "progress"),
                         ("GET", "cmd-flags")):
        r = requests.request(method, f"{server}/sdapi/v1/{path}", headers=headers, json={} if method == "POST" else None,
                             timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.json() == {"error": "HTTPException", "detail": detail, "body": "", "errors": ""}


def test_200_with_credentials(server):
    for userpass in ("alice:s3cret:with:colons", "bob:pw"):
        r = requests.get(f"{server}/sdapi/v1/options", headers=basic(userpass), timeout=10)
        assert r.status_code == 200 and "sd_model_checkpoint" in r.json()
    port = int(server.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="bob", password="pw")
    result = api.txt2img(prompt="authorised", seed=1, **FAST)
    assert len(result.images) == 1
    assert api.get_progress()["state"]["job_count"] == 0


def test_exempt_routes_and_cors(server):
    for path in ("/internal/ping", "/sdapi/v1/loras", "/openapi.json", "/docs"):
        assert requests.get(f"{server}{path}", timeout=10).status_code == 200, path
    assert requests.post(f"{server}/sdapi/v1/refresh-loras", timeout=10).status_code == 200
    preflight = requests.options(f"{server}/sdapi/v1/txt2img", timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    denied = requests.get(f"{server}/sdapi/v1/options", headers={"Origin": ORIGIN}, timeout=10)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    other = requests.get(f"{server}/sdapi/v1/options", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers


def test_cmd_flags_never_expose_credentials(server):
    r = requests.get(f"{server}/sdapi/v1/cmd-flags", headers=basic("bob:pw"), timeout=10)
    flags = r.json()
    assert flags["api_auth"] == "<hidden>" and flags["api_log"] is True and flags["listen"] is False
    assert "s3cret" not in r.text and "bob:pw" not in r.text


def test_api_log_lines(served):
    server, workdir = served
    requests.get(f"{server}/sdapi/v1/sd-models", headers=basic("bob:pw"), timeout=10)
    requests.get(f"{server}/internal/ping", timeout=10)
    lines = [ln for ln in (workdir / "server.log").read_text().splitlines() if " API " in ln]
    assert any(" 200 http/1.1 GET /sdapi/v1/sd-models 127.0.0.1 " in ln for ln in lines)
    assert not any("/internal/ping" in ln for ln in lines)


def test_parse_credentials_and_check():
    creds = parse_credentials("a:b, c:d:e")
    assert creds == {"a": "b", "c": "d:e"}
    assert check("Basic " + base64.b64encode(b"c:d:e").decode(), creds) is None
    assert check("basic " + base64.b64encode(b"a:b").decode(), creds) is None  # scheme is case-insensitive
    with pytest.raises(ValueError):
        parse_credentials("nopassword")

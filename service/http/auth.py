"""HTTP Basic auth for the API (`--api-auth user:pass[,user2:pass2]`) with A1111's 401 bodies (A1111
modules/api/api.py: Api.auth). An ASGI middleware, so every route of every router is covered without each
declaring it."""

from __future__ import annotations

import base64
import binascii
import json
import secrets

# A1111 leaves these open even with --api-auth: the Lora extension's routes, /internal/*, the API docs.
EXEMPT_PATHS = frozenset({"/sdapi/v1/loras", "/sdapi/v1/refresh-loras", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/openapi.json", "/config", "/queue/status"})  # Gradio's, not the API's
EXEMPT_PREFIXES = ("/internal/",)


def parse_credentials(spec: str) -> dict[str, str]:
    """"u1:p1,u2:p2" → {user: password}. The password is everything after the first `:`."""
    credentials = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user:
            raise ValueError(f"--api-auth entry {user!r} is not user:password")
        credentials[user] = password
    return credentials


def check(authorization: str | None, credentials: dict[str, str]) -> str | None:
    """None when the header names a known user with the right password, else A1111's (FastAPI's) 401 detail."""
    scheme, _, param = (authorization or "").partition(" ")
    if not authorization or not scheme or not param or scheme.lower() != "basic":
        return "Not authenticated"
    try:
        decoded = base64.b64decode(param).decode("ascii")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return "Invalid authentication credentials"
    user, sep, password = decoded.partition(":")
    if not sep:
        return "Invalid authentication credentials"
    expected = credentials.get(user)
    # Compare even for an unknown user, so timing does not tell which user names exist.
    ok = secrets.compare_digest(password.encode(), (expected if expected is not None else password + "x").encode())
    return None if ok and expected is not None else "Incorrect username or password"


def is_exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class BasicAuthMiddleware:
    def __init__(self, app, credentials: dict[str, str]):
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_exempt(scope["path"]):
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        detail = check(header, self.credentials)
        if detail is None:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": "HTTPException", "detail": detail, "body": "", "errors": ""}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Basic")]})
        await send({"type": "http.response.body", "body": body})

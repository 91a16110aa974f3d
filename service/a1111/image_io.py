"""Images sent in requests (init_images, mask): base64, `data:` URLs and, when enabled, http(s) — with limits
(A1111 modules/api/api.py: decode_base64_to_image). Every failure is an `ImageInputError`, which the routes
turn into a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

MiB = 1 << 20


class ImageInputError(ValueError):
    """An image string the server will not use; `status_code` is 413 for oversized input, else 422."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * MiB  # encoded file size
    max_pixels: int = 40_000_000  # width × height, checked from the header before any pixel is decoded
    allow_urls: bool = False  # option api_enable_requests
    forbid_local_urls: bool = True  # option api_forbid_local_requests
    url_timeout: float = 30.0
    user_agent: str = ""
    local_dir: Path | None = None  # `sdedge serve --allow-local-images DIR`: files inside DIR may be named


LOCAL_IMAGES_FLAG = "--allow-local-images"
_MAX_PATH = 4096


def limits_from_options(options) -> ImageLimits:
    return ImageLimits(
        allow_urls=bool(options.get("api_enable_requests", False)),
        forbid_local_urls=bool(options.get("api_forbid_local_requests", True)),
        user_agent=str(options.get("api_useragent", "") or ""),
    )


def decode_image(value: object, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """An image string as A1111 reads it: EXIF orientation applied, RGB/P with a transparency chunk → RGBA."""
    if not isinstance(value, str):
        raise ImageInputError(f"expected an image as a base64 string, got {type(value).__name__}")
    if value.startswith(("http://", "https://")):
        data = _fetch(value, limits)
    elif is_local_path(value):
        data = _read_local(value, limits)
    else:
        data = _base64_bytes(value, limits)
    return _open(data, limits)


def is_local_path(value: str) -> bool:
    """A file path rather than base64: short, one line, `file://` or not valid base64 (a "." or an odd length)
    while holding a separator or an extension. A1111 reads no paths at all (its base64 decoder fails on them);
    base64 of an image (even JPEG's "/9j/…") is never taken for one."""
    if value.startswith("file://"):
        return True
    if len(value) > _MAX_PATH or "\n" in value or value.startswith("data:"):
        return False
    if not any(c in value for c in "/\\."):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return True
    return False


def _read_local(value: str, limits: ImageLimits) -> bytes:
    """The bytes of a file inside `limits.local_dir`, refused (403) without the flag or outside the folder
    after every symlink is resolved; the same size limits as base64 input."""
    if limits.local_dir is None:
        raise ImageInputError(f"image paths on the server are refused; start the server with {LOCAL_IMAGES_FLAG} "
                              "DIR to allow files inside DIR", 403)
    name = value[len("file://"):] if value.startswith("file://") else value
    root = Path(limits.local_dir).resolve()
    try:
        path = (root / name).resolve()  # an absolute `name` is itself; symlinks are followed to their target
    except (OSError, RuntimeError, ValueError):
        raise ImageInputError("invalid image path") from None
    if path != root and root not in path.parents:
        raise ImageInputError(f"image path outside the folder allowed by {LOCAL_IMAGES_FLAG}", 403)
    if not path.is_file():
        raise ImageInputError(f"no image file {name!r} in the folder allowed by {LOCAL_IMAGES_FLAG}")
    if path.stat().st_size > limits.max_bytes:
        raise ImageInputError(f"image larger than {limits.max_bytes // MiB} MiB", 413)
    with open(path, "rb") as f:
        return f.read(limits.max_bytes + 1)


def _base64_bytes(value: str, limits: ImageLimits) -> bytes:
    if value.startswith("data:image/"):
        # A1111 keeps what follows the first "," after the first ";": data:image/png;base64,XXXX → XXXX.
        try:
            value = value.split(";")[1].split(",")[1]
        except IndexError:
            raise ImageInputError("invalid data: URL") from None
    if len(value) > limits.max_bytes * 4 // 3 + 4:
        raise ImageInputError(f"image larger than {limits.max_bytes // MiB} MiB", 413)
    try:
        # Lenient like A1111: characters outside the alphabet (newlines) are skipped; bad padding fails.
        return base64.b64decode(value)
    except (binascii.Error, ValueError):
        raise ImageInputError("invalid encoded image: not base64") from None


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if len(data) > limits.max_bytes:
        raise ImageInputError(f"image larger than {limits.max_bytes // MiB} MiB", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > limits.max_pixels:
                raise ImageInputError(
                    f"image of {image.width}x{image.height} pixels is over the limit of {limits.max_pixels}", 413
                )
            image.load()  # decode now: a truncated or corrupt file fails here, not inside the job
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"image is over the limit of {limits.max_pixels} pixels", 413) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        raise ImageInputError(f"invalid encoded image: {exc}") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
        image = image.convert("RGBA")
    return image


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead to a local address after the check: refuse them all.
    def redirect_request(self, *args, **kwargs):
        return None


def _fetch(url: str, limits: ImageLimits) -> bytes:
    if not limits.allow_urls:
        raise ImageInputError("requests not allowed: image URLs are disabled (option api_enable_requests)", 403)
    host = urllib.parse.urlparse(url).hostname
    if not host:
        raise ImageInputError("invalid image url")
    if limits.forbid_local_urls:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            raise ImageInputError(f"cannot resolve {host}") from None
        if not all(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
            raise ImageInputError("request to local resource not allowed", 403)
    headers = {"User-Agent": limits.user_agent} if limits.user_agent else {}
    try:
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(urllib.request.Request(url, headers=headers), timeout=limits.url_timeout) as r:
            data = r.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageInputError(f"invalid image url: {exc}") from None
    if len(data) > limits.max_bytes:
        raise ImageInputError(f"image larger than {limits.max_bytes // MiB} MiB", 413)
    return data

"""The generation text an image file carries, read as A1111's `read_info_from_image` reads it (A1111
modules/images.py): PNG `parameters`, else EXIF UserComment (JPEG/WebP), else a GIF comment; NovelAI PNGs
converted."""

from __future__ import annotations

import json
import logging
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

# Image.info keys that are file-format technicalities, not metadata a user wrote (A1111 IGNORED_INFO_KEYS).
IGNORED_INFO_KEYS = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                     "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
                     "photoshop"}

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_USER_COMMENT_ENCODINGS = {b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis", b"UNICODE\0": "utf_16_be"}


def user_comment(raw: bytes) -> str:
    """piexif `UserComment.load`, and A1111's fallback when it refuses: the whole value as lenient UTF-8."""
    prefix, body = raw[:8], raw[8:]
    encoding = _USER_COMMENT_ENCODINGS.get(prefix) if len(raw) >= 8 else None
    if encoding is None:
        return raw.decode("utf8", errors="ignore")
    return body.decode(encoding, errors="replace")


def _exif_comment(data: Any) -> str:
    if not isinstance(data, bytes | bytearray):
        return ""
    try:
        exif = Image.Exif()
        exif.load(bytes(data))
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT, b"")
    except Exception:  # unreadable EXIF counts as none, as A1111's piexif.load failure does
        return ""
    if isinstance(comment, str):
        return comment
    return user_comment(bytes(comment)) if comment else ""


def _novelai(image: Image.Image, items: dict[str, Any]) -> str | None:
    from engine.samplers import SAMPLERS

    names = {alias.lower(): spec.name for spec in SAMPLERS.values() for alias in (spec.name, *spec.aliases)}
    try:
        info = json.loads(items["Comment"])
        sampler = names.get(info["sampler"], "Euler a")
        return (f"{items['Description']}\nNegative prompt: {info['uc']}\nSteps: {info['steps']}, Sampler: {sampler}, "
                f"CFG scale: {info['scale']}, Seed: {info['seed']}, Size: {image.width}x{image.height}, "
                f"Clip skip: 2, ENSD: 31337")
    except Exception:
        log.warning("error parsing NovelAI image generation parameters", exc_info=True)
        return None


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """(generation text or None, the image's other info entries)."""
    items = dict(image.info or {})
    geninfo = items.pop("parameters", None)
    if "exif" in items:
        comment = _exif_comment(items["exif"])
        if comment:
            geninfo = comment
    elif "comment" in items:  # GIF
        comment = items["comment"]
        geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    if items.get("Software") == "NovelAI":
        geninfo = _novelai(image, items) or geninfo
    return geninfo, items


def json_safe(value: Any) -> Any:
    """Info values as JSON: bytes as (lenient) UTF-8 text, tuples as lists, anything else odd as its str()."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf8", errors="replace")
    if isinstance(value, tuple | list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    return str(value)

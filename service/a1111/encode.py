"""PIL images → base64 strings in the configured format, with the infotext embedded as A1111 embeds it."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

from PIL import Image, PngImagePlugin


class UnsupportedImageFormat(ValueError):
    pass


def _exif_user_comment(text: str) -> bytes:
    exif = Image.Exif()
    # EXIF UserComment (0x9286): 8-byte "UNICODE\0" prefix, then UTF-16-BE, as piexif writes it for A1111.
    exif[0x8769] = {0x9286: b"UNICODE\0" + text.encode("utf-16-be")}
    return exif.tobytes()


def encode_image(image: Image.Image, fmt: str = "png", infotext: str | None = None, quality: int = 80,
                 webp_lossless: bool = False, text: Mapping[str, str] | None = None) -> bytes:
    """Encoded file bytes; `infotext` goes to the PNG `parameters` chunk or the JPEG/WebP EXIF UserComment.

    `text` (PNG text chunks in order, e.g. an extras result's own chunks plus `postprocessing`) replaces the
    single `parameters` chunk; JPEG/WebP then carry its `parameters` entry, as A1111's API encoder does.
    """
    fmt = fmt.lower()
    out = io.BytesIO()
    if text is not None:
        infotext = text.get("parameters") if fmt != "png" else None
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        chunks = dict(text) if text is not None else ({"parameters": infotext} if infotext is not None else {})
        for key, value in chunks.items():
            info.add_itxt(key, value) if not _latin1(value) else info.add_text(key, value)
        image.save(out, format="PNG", pnginfo=info)
    elif fmt in ("jpg", "jpeg", "webp"):
        if image.mode == "RGBA":
            image = image.convert("RGB")
        kwargs = {"quality": int(quality)}
        if infotext is not None:
            kwargs["exif"] = _exif_user_comment(infotext)
        if fmt == "webp":
            image.save(out, format="WEBP", lossless=webp_lossless, **kwargs)
        else:
            image.save(out, format="JPEG", **kwargs)
    else:
        raise UnsupportedImageFormat("Invalid image format")
    return out.getvalue()


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

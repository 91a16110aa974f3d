"""Image upscalers by name, as A1111 lists them: "None", PIL's Lanczos and Nearest, and ONNX super-resolution
models found in an upscalers folder (an ESRGAN-style graph: RGB [1, 3, H, W] in [0, 1] → [1, 3, sH, sW])."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from engine import image_ops
from engine.backend import PROVIDER_PRESETS

log = logging.getLogger(__name__)

DEFAULT_SCALE = 4.0  # what A1111 reports for upscalers without a model (`UpscalerData.scale`)


class Upscaler(Protocol):
    name: str

    @property
    def scale(self) -> float | None: ...

    @property
    def path(self) -> str | None: ...

    def upscale(self, image: Image.Image, scale: float) -> Image.Image: ...


@dataclass(frozen=True)
class ResamplerUpscaler:
    """A1111's Lanczos / Nearest: repeated ×scale PIL resizes (`Upscaler.upscale`)."""

    name: str
    resample: Image.Resampling
    scale: float | None = DEFAULT_SCALE
    path: str | None = None

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        return image_ops.upscale(image, scale, self.resample)


def upscale_in_passes(image: Image.Image, scale: float, one_pass: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """A1111 `Upscaler.upscale` around a model's fixed-factor pass: up to three passes until the image covers
    w·scale × h·scale (rounded down to multiples of 8), then a LANCZOS resize to exactly that."""
    dest_w = int((image.width * scale) // 8 * 8)
    dest_h = int((image.height * scale) // 8 * 8)
    for i in range(3):
        if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
            break
        size = image.size
        image = one_pass(image)
        if image.size == size:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=image_ops.LANCZOS)
    return image


class OnnxUpscaler:
    """A super-resolution ONNX model; the session is created on first use."""

    PROBE = 16  # side of the blank image run once to learn the factor when the file name does not say it

    def __init__(self, path: Path, providers: str | list[str] = "cpu"):
        self.file = Path(path)
        self.name = self.file.stem
        self.providers = PROVIDER_PRESETS[providers] if isinstance(providers, str) else list(providers)
        self._session = None
        self._scale: float | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return str(self.file)

    @property
    def scale(self) -> float:
        if self._scale is None:
            m = re.search(r"(\d+)[xX]|[xX](\d+)", self.name)  # "4x-UltraSharp", "RealESRGAN_x2plus"
            if m:
                self._scale = float(m.group(1) or m.group(2))
            else:
                probe = self.enlarge(Image.new("RGB", (self.PROBE, self.PROBE)))
                self._scale = probe.width / self.PROBE
        return self._scale

    def _get_session(self):
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                self._session = ort.InferenceSession(str(self.file), providers=self.providers)
            return self._session

    def enlarge(self, image: Image.Image) -> Image.Image:
        """One pass of the model (RGB; an alpha channel is dropped, as A1111's model upscalers do)."""
        session = self._get_session()
        spec = session.get_inputs()[0]
        dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        x = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
        (out,) = session.run(None, {spec.name: x.astype(dtype)})[:1]
        rgb = np.clip(np.asarray(out[0], dtype=np.float32), 0.0, 1.0).transpose(1, 2, 0)
        return Image.fromarray((255.0 * rgb).round().astype(np.uint8), mode="RGB")

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        return upscale_in_passes(image, scale, self.enlarge)


BUILTIN: tuple[Upscaler, ...] = (
    ResamplerUpscaler("Lanczos", Image.Resampling.LANCZOS),
    ResamplerUpscaler("Nearest", Image.Resampling.NEAREST),
)


class UpscalerRegistry:
    """The built-in resamplers plus `*.onnx` files in `directory`, in A1111's order ("None" is listed but is no
    upscaler: asking for it means no upscaling)."""

    def __init__(self, directory: Path | None = None, providers: str | list[str] = "cpu"):
        self.directory = Path(directory) if directory else None
        self.providers = providers
        self._models: dict[str, Upscaler] = {}
        self.refresh()

    def refresh(self) -> None:
        found: dict[str, Upscaler] = {}
        if self.directory and self.directory.is_dir():
            for file in sorted(self.directory.rglob("*.onnx"), key=lambda p: p.stem.lower()):
                found.setdefault(file.stem, OnnxUpscaler(file, self.providers))
        self._models = found

    def get(self, name: str) -> Upscaler | None:
        for upscaler in (*BUILTIN, *self._models.values()):
            if upscaler.name == name:
                return upscaler
        return None

    def names(self) -> list[str]:
        return ["None", *(u.name for u in BUILTIN), *self._models]

    def all(self) -> list[Upscaler]:
        return [*BUILTIN, *self._models.values()]

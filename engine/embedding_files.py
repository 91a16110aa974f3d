"""One textual-inversion file → an `Embedding`, as A1111 reads them.

A1111 modules/textual_inversion/textual_inversion.py: EmbeddingDatabase.load_from_file (which files count: `.pt`
and `.bin` through torch.load, `.safetensors`, images with an `sd-ti-embedding` text chunk; `*.preview.*` images
are previews; zero-byte files are skipped by load_from_dir) and create_embedding_from_data (the accepted layouts:
A1111's own `string_to_param` with exactly one term, SDXL's `clip_l`/`clip_g` pair, a dict of a single tensor —
diffusers' `learned_embeds.bin` and `emb_params` `.safetensors` —, a 1-D vector unsqueezed). The name is the file
stem, case kept (an image's `name` entry wins); the hash is the sha256 of the whole file.

`.pt`/`.bin` are read by engine/torch_pickle.py, which never runs the file's code. Embeddings hidden in an image's
pixels (A1111's extract_image_data_embed) and `.jxl`/`.avif` images are not read (docs/compatibility.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.textual_inversion import Embedding

TORCH_SUFFIXES = (".pt", ".bin")
IMAGE_SUFFIXES = (".png", ".webp")
SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", *IMAGE_SUFFIXES)
IMAGE_CHUNK = "sd-ti-embedding"


class EmbeddingFileError(ValueError):
    """The file is meant as an embedding but cannot be read as one (the server lists it nowhere, and logs why)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_candidate(path: Path) -> bool:
    """Whether A1111 would try the file: a known suffix, and for images not a `<name>.preview.<ext>`."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        return False
    return not (suffix in IMAGE_SUFFIXES and Path(path.stem).suffix.lower() == ".preview")


def _as_vectors(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim not in (1, 2) or not np.issubdtype(value.dtype, np.number):
        raise EmbeddingFileError(f"{what} is not a vector or a matrix of vectors")
    array = value.astype(np.float32)
    return array[None, :] if array.ndim == 1 else array  # diffusers' learned_embeds: one (width,) vector


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def embedding_from_data(data: Any, name: str, filename: str = "", shorthash: str = "") -> Embedding:
    """A1111's create_embedding_from_data on an already-read file."""
    if not isinstance(data, Mapping):
        raise EmbeddingFileError(f"{filename or name}: not a textual inversion embedding (no dict inside)")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "parameters", params)  # an old ParameterDict (engine/torch_pickle.TorchModule)
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingFileError(f"{filename or name}: embedding file has multiple terms in it")
        vectors = {"text_encoder": _as_vectors(next(iter(params.values())), "string_to_param")}
    elif "clip_g" in data and "clip_l" in data:  # SDXL: one vector set per encoder
        vectors = {"text_encoder": _as_vectors(data["clip_l"], "clip_l"),
                   "text_encoder_2": _as_vectors(data["clip_g"], "clip_g")}
        if vectors["text_encoder"].shape[0] != vectors["text_encoder_2"].shape[0]:
            raise EmbeddingFileError(f"{filename or name}: clip_l and clip_g hold different numbers of vectors")
    elif data and isinstance(next(iter(data.values())), np.ndarray):
        if len(data) != 1:
            raise EmbeddingFileError(f"{filename or name}: embedding file has multiple terms in it")
        vectors = {"text_encoder": _as_vectors(next(iter(data.values())), "the tensor")}
    else:
        raise EmbeddingFileError(f"Couldn't identify {filename or name} as neither textual inversion embedding "
                                 "nor diffusers concept.")
    return Embedding(name=name, vectors=vectors, filename=filename, shorthash=shorthash,
                     step=_int_or_none(data.get("step")), sd_checkpoint=_str_or_none(data.get("sd_checkpoint")),
                     sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")))


def _tensor_hook(value: dict) -> Any:
    """A1111's EmbeddingDecoder: `{"TORCHTENSOR": nested lists}` is a tensor."""
    if "TORCHTENSOR" in value:
        return np.asarray(value["TORCHTENSOR"], dtype=np.float32)
    return value


def data_from_image_text(text: str) -> dict:
    """The `sd-ti-embedding` chunk: base64 of JSON with tensors as `TORCHTENSOR` lists (embedding_from_b64)."""
    try:
        return json.loads(base64.b64decode(text), object_hook=_tensor_hook)
    except (ValueError, TypeError) as exc:
        raise EmbeddingFileError(f"the {IMAGE_CHUNK} chunk is not base64 JSON ({exc})") from exc


def _read_data(path: Path) -> tuple[Any, str] | None:
    """(data, name), or None for a file that is not an embedding at all (an image without the chunk)."""
    suffix = path.suffix.lower()
    name = path.stem
    if suffix in TORCH_SUFFIXES:
        from engine.torch_pickle import TorchFileError, load

        try:
            return load(path), name
        except TorchFileError as exc:
            raise EmbeddingFileError(str(exc)) from exc
    if suffix == ".safetensors":
        from engine.safetensors_file import SafetensorsError, load_file

        try:
            return load_file(path)[0], name
        except SafetensorsError as exc:
            raise EmbeddingFileError(str(exc)) from exc
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", None) or image.info
            chunk = text.get(IMAGE_CHUNK) if isinstance(text, Mapping) else None
    except (UnidentifiedImageError, OSError) as exc:
        raise EmbeddingFileError(f"{path.name}: unreadable image ({exc})") from exc
    if not isinstance(chunk, str):
        return None  # a plain image (data hidden in the pixels is not read)
    data = data_from_image_text(chunk)
    if isinstance(data, Mapping) and data.get("name"):
        name = str(data["name"])
    return data, name


def read_embedding(path: Path | str) -> Embedding | None:
    """The embedding in `path`; None for files A1111 passes over (zero bytes, previews, other suffixes, images
    without an embedding); EmbeddingFileError for a file that should be one and is not."""
    path = Path(path)
    if not is_candidate(path):
        return None
    try:
        if path.stat().st_size == 0:
            return None
    except OSError as exc:
        raise EmbeddingFileError(f"{path.name}: {exc}") from exc
    found = _read_data(path)
    if found is None:
        return None
    data, name = found
    return embedding_from_data(data, name, filename=str(path), shorthash=file_sha256(path)[:12])


def embedding_width(embedding: Embedding) -> int:
    """A1111's `shape`: the vectors' width, summed over SDXL's two encoders (clip_g + clip_l = 2048)."""
    return int(sum(v.shape[-1] for v in embedding.vectors.values()))

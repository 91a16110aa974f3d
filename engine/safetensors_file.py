"""Read `.safetensors` files into NumPy without torch, bf16 included.

The `safetensors` package's NumPy loader refuses BF16 (NumPy has no such dtype), and many LoRA files are bf16.
The format is small enough to read directly: an 8-byte little-endian header length, a JSON header (per tensor
dtype, shape and byte range; `__metadata__` string pairs), then the raw bytes
(https://github.com/huggingface/safetensors, "Format").
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# A header larger than this is not a weights file we can take (the format allows 100 MB).
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
    """The file is not a readable `.safetensors` file."""


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: int  # 8 + the JSON header's length: where the tensor data starts
    tensors: dict[str, dict]
    metadata: dict[str, str]


def read_header(path: Path) -> SafetensorsHeader:
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path.name}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path.name}: header of {length} bytes is not plausible")
        text = f.read(length)
    if len(text) != length:
        raise SafetensorsError(f"{path.name}: truncated header")
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise SafetensorsError(f"{path.name}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    return SafetensorsHeader(8 + length, header, {str(k): str(v) for k, v in metadata.items()})


def load_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata). Half-precision tensors come back as float32 (bf16 widened exactly)."""
    path = Path(path)
    header = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.tensors.items():
        try:
            begin, end = (header.header_bytes + int(o) for o in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            dtype = info["dtype"]
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"{path.name}: bad header entry for {name!r}") from exc
        if end > data.size or begin > end:
            raise SafetensorsError(f"{path.name}: tensor {name!r} lies beyond the end of the file (truncated?)")
        chunk = np.asarray(data[begin:end])
        if dtype == "BF16":
            array = (chunk.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            array = chunk.view(_DTYPES[dtype])
            if array.dtype == np.float16:
                array = array.astype(np.float32)
        else:
            raise SafetensorsError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype}")
        if array.size != int(np.prod(shape)):
            raise SafetensorsError(f"{path.name}: tensor {name!r} has {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape)
    return tensors, header.metadata


def addnet_hash(path: Path) -> str:
    """kohya's "addnet" hash, A1111's LoRA hash: sha256 of the bytes after the header, so editing the metadata
    does not change it (A1111 modules/hashes.py: addnet_hash_safetensors)."""
    path = Path(path)
    header = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(header.header_bytes)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write float32/float16/int tensors (tests, and LoRAs trained in the repo)."""
    names = {v: k for k, v in _DTYPES.items()}
    header: dict = {"__metadata__": metadata} if metadata else {}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        blob = array.tobytes()
        header[name] = {"dtype": names[array.dtype.type], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)

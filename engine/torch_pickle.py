"""Read torch `.pt`/`.bin`/`.ckpt` files into NumPy without torch, and without running their code.

A torch file is a pickle: opening one with `torch.load` (or plain `pickle`) can call any function the file names,
which is how a malicious embedding or LoRA runs code. A1111 guards `torch.load` with its own restricted unpickler
(modules/safe.py: RestrictedUnpickler); this is the same idea without torch: the unpickler resolves only the few
globals a tensor file needs (tensor and parameter rebuilders, the typed storages, `OrderedDict`, `torch.Size`, a
handful of builtins) and refuses every other one with `TorchFileError` naming it, so the caller skips the file.

Formats (torch/serialization.py): the zip format torch writes since 1.6 (`<archive>/data.pkl`, storages in
`<archive>/data/<key>`, little-endian raw bytes) and the legacy format before it (magic number, protocol version
and system info pickles, the object pickle, the storage keys, then each storage as an 8-byte element count and its
bytes). Tensors come back as NumPy arrays with torch's size, stride and offset applied (copies, so views of one
storage do not alias); bf16 is widened to float32 exactly (NumPy has no bf16), other dtypes keep theirs.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# torch storage class → (NumPy dtype of its bytes, whether the values are bf16 to widen).
_STORAGES: dict[str, tuple[np.dtype, bool]] = {
    "FloatStorage": (np.dtype("<f4"), False),
    "DoubleStorage": (np.dtype("<f8"), False),
    "HalfStorage": (np.dtype("<f2"), False),
    "BFloat16Storage": (np.dtype("<u2"), True),
    "LongStorage": (np.dtype("<i8"), False),
    "IntStorage": (np.dtype("<i4"), False),
    "ShortStorage": (np.dtype("<i2"), False),
    "CharStorage": (np.dtype("i1"), False),
    "ByteStorage": (np.dtype("u1"), False),
    "BoolStorage": (np.dtype("?"), False),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_LEGACY_ELEMENTS = 1 << 36  # a storage claiming more is a corrupt (or hostile) file, not weights


class TorchFileError(ValueError):
    """The file is not a torch file we can read safely (corrupt, or it names a global we refuse)."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype, self.bf16 = _STORAGES[name]


class _Storage:
    """One storage's elements as a flat array (bf16 still as uint16 bits)."""

    def __init__(self, data: np.ndarray, bf16: bool):
        self.data = data
        self.bf16 = bf16


class TorchModule:
    """A pickled `nn.Module`/`ParameterDict` (old textual-inversion files hold `string_to_param` as one): its
    state is kept, nothing of it runs. `parameters` is its `_parameters` dict."""

    def __init__(self, *args, **kwargs):
        self.state: dict = {}

    def __setstate__(self, state) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}

    @property
    def parameters(self) -> dict:
        found = self.state.get("_parameters")
        return dict(found) if isinstance(found, dict) else {}


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_ignored) -> np.ndarray:
    """torch._utils._rebuild_tensor(_v2): a view (offset, size, stride in elements) of the storage, copied."""
    if not isinstance(storage, _Storage):
        raise TorchFileError("a tensor without a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise TorchFileError(f"bad tensor view: size {size}, stride {stride}, offset {offset}")
    flat = storage.data
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size:
            raise TorchFileError(f"tensor view {size} at offset {offset} lies beyond its storage of {flat.size}")
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=tuple(s * flat.itemsize for s in stride), writeable=False)
    else:
        view = np.zeros(size, dtype=flat.dtype)
    array = np.array(view, copy=True)
    if storage.bf16:
        array = np.asarray(array.astype(np.uint32) << 16).view(np.float32)  # 0-d stays an array
    return array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored):
    return data


def _size(dims=()) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor, as protocol-0/1 pickles of objects use it: only for the module stand-in."""
    if cls is not TorchModule:
        raise TorchFileError(f"refused to reconstruct {getattr(cls, '__name__', cls)!r}")
    return TorchModule()


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode: how protocol-2 pickles written by Python 3 spell `bytes`."""
    return str(text).encode(encoding)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch.nn.modules.container", "ParameterDict"): TorchModule,
    ("torch.nn.modules.container", "ParameterList"): TorchModule,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
}

# Protocol-2 pickles name Python 3's modules by their Python 2 names (pickle's fix_imports).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage, lazy: bool = False):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self._lazy = lazy  # legacy files: storages are read after the pickle, tensors are built then

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        if self._lazy and module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda *args: _LazyTensor(args)
        found = _ALLOWED.get((_PY2_MODULES.get(module, module), name))
        if found is None:
            raise TorchFileError(f"refused global {module}.{name} (not part of a tensor file; never executed)")
        return found

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module" and pid[1] is TorchModule:
            return TorchModule  # legacy files record a pickled module's class with its source; the source is unused
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise TorchFileError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unsupported storage type {storage_type!r:.80}")
        view = pid[5] if len(pid) > 5 else None
        return self._load_storage(storage_type, str(key), int(numel), view)


def _unpickle(data: bytes, load_storage) -> Any:
    try:
        return _Unpickler(io.BytesIO(data), load_storage).load()
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            struct.error) as exc:
        raise TorchFileError(f"not a readable torch pickle: {exc}") from exc


def _stored_member(archive: zipfile.ZipFile, raw: np.ndarray, member: str) -> np.ndarray:
    """A member's bytes as a slice of `raw` (the whole file, mapped) when it is stored uncompressed, as torch
    stores storages: no copy and no CRC pass (zipfile's read costs 3× the load otherwise); else zipfile's read."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return np.frombuffer(archive.read(member), dtype=np.uint8)
    offset = info.header_offset
    local = raw[offset:offset + 30].tobytes()
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise TorchFileError(f"bad zip entry {member}")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    start = offset + 30 + name_length + extra_length
    if start + info.file_size > raw.size:
        raise TorchFileError(f"zip entry {member} lies beyond the end of the file (truncated?)")
    return raw[start:start + info.file_size]


def _load_zip(archive: zipfile.ZipFile, raw: np.ndarray, name: str) -> Any:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise TorchFileError(f"{name}: a zip without exactly one <archive>/data.pkl")
    root = pickles[0][: -len("data.pkl")]
    if archive.namelist() and f"{root}byteorder" in archive.namelist():
        if archive.read(f"{root}byteorder").strip() not in (b"little", b""):
            raise TorchFileError(f"{name}: big-endian storages are not supported")
    cache: dict[str, _Storage] = {}

    def load_storage(kind: _StorageType, key: str, numel: int, view) -> _Storage:
        if key not in cache:
            try:
                data = _stored_member(archive, raw, f"{root}data/{key}")
            except KeyError:
                raise TorchFileError(f"{name}: storage {key} is missing") from None
            if data.size % kind.dtype.itemsize:
                raise TorchFileError(f"{name}: storage {key} has {data.size} bytes, not whole {kind.name} elements")
            cache[key] = _Storage(data.view(kind.dtype), kind.bf16)
        return cache[key]

    return _unpickle(archive.read(pickles[0]), load_storage)


def _load_legacy(data: bytes, name: str) -> Any:
    stream = io.BytesIO(data)

    def header_pickle() -> Any:
        try:
            return _Unpickler(stream, None).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
            raise TorchFileError(f"{name}: not a torch file ({exc})") from exc

    if header_pickle() != _LEGACY_MAGIC:
        raise TorchFileError(f"{name}: not a torch file (no zip archive, no legacy magic number)")
    header_pickle()  # protocol version
    header_pickle()  # system info (endianness, type sizes)
    wanted: dict[str, tuple[_StorageType, list]] = {}

    def load_storage(kind: _StorageType, key: str, numel: int, view) -> _Storage:
        holder = wanted.setdefault(key, (kind, []))[1]
        if view is not None:
            raise TorchFileError(f"{name}: legacy storage views are not supported")
        if not holder:
            holder.append(_Storage(np.zeros(0, dtype=kind.dtype), kind.bf16))
        return holder[0]

    unpickler = _Unpickler(stream, load_storage, lazy=True)
    try:
        result = unpickler.load()
        keys = _Unpickler(stream, None).load()
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise TorchFileError(f"{name}: not a readable torch pickle: {exc}") from exc
    for key in keys:
        raw_count = stream.read(8)
        if len(raw_count) != 8:
            raise TorchFileError(f"{name}: truncated storage {key}")
        (count,) = struct.unpack("<q", raw_count)
        kind, holder = wanted.get(str(key), (None, None))
        if kind is None or not 0 <= count <= _MAX_LEGACY_ELEMENTS:
            raise TorchFileError(f"{name}: unexpected storage {key}")
        raw = stream.read(count * kind.dtype.itemsize)
        if len(raw) != count * kind.dtype.itemsize:
            raise TorchFileError(f"{name}: truncated storage {key}")
        holder[0].data = np.frombuffer(raw, dtype=kind.dtype)
    try:
        return _materialize(result)
    except TorchFileError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        raise TorchFileError(f"{name}: bad tensor record: {exc}") from exc


def _materialize(value: Any) -> Any:
    """Legacy files: the tensors, rebuilt lazily while unpickling, built now that the storages are read."""
    if isinstance(value, _LazyTensor):
        return value.build()
    if isinstance(value, dict):
        out = type(value)() if isinstance(value, collections.OrderedDict) else {}
        for k, v in value.items():
            out[k] = _materialize(v)
        return out
    if isinstance(value, list):
        return [_materialize(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_materialize(v) for v in value)
    if isinstance(value, TorchModule):
        value.state = _materialize(value.state)
    return value


class _LazyTensor:
    def __init__(self, args):
        self.args = args

    def build(self) -> np.ndarray:
        return _rebuild_tensor(*self.args)


def load(path: Path | str) -> Any:
    """The object a torch file holds, tensors as NumPy arrays. TorchFileError if it cannot be read safely."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise TorchFileError(f"{path.name}: empty file")
        if zipfile.is_zipfile(path):  # mapped: tensors are copied out of the page cache, the file is not read twice
            return _zip(zipfile.ZipFile(path), np.memmap(path, dtype=np.uint8, mode="r"), path.name)
        data = path.read_bytes()
    except OSError as exc:
        raise TorchFileError(f"{path.name}: {exc}") from exc
    return _load_legacy(data, path.name)


def _zip(archive: zipfile.ZipFile, raw: np.ndarray, name: str) -> Any:
    try:
        with archive:
            return _load_zip(archive, raw, name)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, TorchFileError):
            raise
        raise TorchFileError(f"{name}: damaged zip archive: {exc}") from exc


def loads(data: bytes, name: str = "<bytes>") -> Any:
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError) as exc:
            raise TorchFileError(f"{name}: damaged zip archive: {exc}") from exc
        return _zip(archive, np.frombuffer(data, dtype=np.uint8), name)
    return _load_legacy(data, name)

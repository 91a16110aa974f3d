"""Files the server rewrites (the options file) replaced atomically: a reader, or the next start after a crash or a
`kill -9` at any instant, finds either the old complete file or the new complete one, never a torn one.

The bytes go to a temporary file in the same folder (so the rename stays within one file system), are flushed and
fsync'ed, the temporary file takes the old file's permissions, and `os.replace` (rename(2), atomic on POSIX and
on Windows' NTFS) puts it in place; the folder is fsync'ed so the rename itself survives a power cut. A kill
between the write and the rename leaves a hidden `.<name>.*.tmp` beside the file, which a later write removes once
it is a minute old (a younger one may be another process's write in progress).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 60.0


def write_atomic(path: str | Path, data: bytes | str, encoding: str = "utf-8") -> None:
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _mode_for(path: Path) -> int:
    """The replaced file's permissions; a new file gets what open() would give it (0666 less the umask), not
    mkstemp's 0600."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove_stale(path: Path) -> None:
    """Temporary files a killed writer left (only ours: hidden, named after this file, `.tmp`)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_AFTER_S:
                stale.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened; the rename is durable there by itself
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

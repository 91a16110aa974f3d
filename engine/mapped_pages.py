"""Drop the resident pages of a read-only file mapping from this process (Linux `madvise(MADV_DONTNEED)`).

Why: OpenVINO reads a model's weights by memory-mapping its IR `.bin` and keeps that mapping for the life of the
compiled model, although the CPU plugin has by then converted every weight into its own buffers (bf16, blocked
layouts). The pages the compile touched stay resident and count in the process's RSS: for a SD 1.5 UNet that is
the whole 1.7 GB f16 file on top of the 1.7 GB the plugin holds. Dropping them is safe because the mapping is
read-only: a page touched again is faulted back in from the file (the page cache), never lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # <sys/mman.h> on Linux, every architecture
_MAPS = Path("/proc/self/maps")


def _madvise():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
    fn = getattr(libc, "madvise", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def read_only_mappings(path: str | Path, maps: str | None = None) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path` that are not writable (only those may be dropped:
    a private writable mapping could hold modified pages)."""
    target = os.path.realpath(path)
    try:
        text = _MAPS.read_text() if maps is None else maps
    except OSError:
        return []
    ranges = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target or "w" in fields[1]:
            continue
        start, _, end = fields[0].partition("-")
        ranges.append((int(start, 16), int(end, 16)))
    return ranges


def drop_file_pages(path: str | Path) -> int:
    """Release this process's resident pages of every read-only mapping of `path`; the bytes of address space
    advised (0 where /proc or madvise is unavailable)."""
    if _MADVISE is None:
        return 0
    dropped = 0
    for start, end in read_only_mappings(path):
        if _MADVISE(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
        else:
            log.debug("madvise(%s) failed: errno %d", path, ctypes.get_errno())
    return dropped


class DroppingPages:
    """While the block runs, drop the resident pages of `paths` every `interval` seconds (a daemon thread), and
    once more at the end. For a compile that reads a whole weight file through a mapping while writing the
    converted copy: without it both are resident at the end of the compile (the process's peak)."""

    def __init__(self, paths: list[Path], interval: float = 0.2):
        import threading

        self.paths, self.interval = list(paths), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drop-mapped-pages", daemon=True)
        self.dropped = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for path in self.paths:
                drop_file_pages(path)

    def __enter__(self) -> DroppingPages:
        if _MADVISE is not None and self.paths:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.dropped = sum(drop_file_pages(path) for path in self.paths)

"""engine/mapped_pages.py: a read-only mapping's resident pages are dropped and read back unchanged."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.mapped_pages import drop_file_pages, read_only_mappings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise")

MiB = 2**20


def mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (from /proc/self/smaps, not from our own parser)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss", "Size")) and ":" in head[3]:
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.fixture
def weights(tmp_path):
    data = np.random.default_rng(0).standard_normal(4 * MiB // 4).astype(np.float32)
    path = tmp_path / "model.bin"
    data.tofile(path)
    return path, data


def test_resident_pages_of_a_read_only_mapping_are_dropped_and_read_back(weights):
    path, data = weights
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.float32)
        assert float(view.sum()) == pytest.approx(float(data.sum()), rel=1e-5)  # every page touched
        assert mapped_rss(path) >= 4 * MiB
        assert drop_file_pages(path) >= 4 * MiB
        assert mapped_rss(path) < 256 * 1024
        np.testing.assert_array_equal(view, data)  # faulted back in from the file, unchanged
        assert mapped_rss(path) >= 4 * MiB
        del view


def test_writable_mappings_are_left_alone(weights):
    path, data = weights
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        view = np.frombuffer(mapped, dtype=np.float32)
        view[0] = 42.0  # a private copy-on-write page: dropping it would lose this write
        assert read_only_mappings(path) == []
        assert drop_file_pages(path) == 0
        assert view[0] == 42.0 and mapped_rss(path) > 0
        del view


def test_maps_lines_are_matched_by_the_whole_path():
    maps = ("7f00-7f10 r--s 00000000 fe:00 1  /m/unet/model.bin\n"
            "7f10-7f20 r--s 00000000 fe:00 2  /m/unet/model.bin.tmp\n"
            "7f20-7f30 rw-p 00000000 fe:00 1  /m/unet/model.bin\n"
            "7f30-7f40 r--p 00000000 fe:00 3  /m/a b/model.bin\n")
    assert read_only_mappings("/m/unet/model.bin", maps) == [(0x7F00, 0x7F10)]
    assert read_only_mappings("/m/a b/model.bin", maps) == [(0x7F30, 0x7F40)]


def test_pages_read_inside_the_block_are_dropped_as_it_goes(weights):
    import time

    from engine.mapped_pages import DroppingPages

    path, data = weights
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.float32)
        with DroppingPages([path], interval=0.02) as dropping:
            assert float(view.sum()) == pytest.approx(float(data.sum()), rel=1e-5)
            deadline = time.monotonic() + 5
            while mapped_rss(path) >= 2 * MiB and time.monotonic() < deadline:
                time.sleep(0.02)
            assert mapped_rss(path) < 2 * MiB  # dropped while the block still runs
            np.testing.assert_array_equal(view, data)
        assert dropping.dropped >= 4 * MiB and mapped_rss(path) < 256 * 1024
        del view

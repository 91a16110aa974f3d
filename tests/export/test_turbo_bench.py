"""benchmarks/turbo.py (the `make bench` Turbo table) measures what it says: at cfg_scale 1 every UNet call
carries batch 1, at CFG 7 batch 2, the same number of calls, and the table reports the ratio of the two."""

from __future__ import annotations

from benchmarks.turbo import measure, table


def test_turbo_rows_count_unet_batches_at_cfg_1_and_7(demo_bundle):
    rows = measure(demo_bundle, size=64, steps=3, repeats=1, threads=1)
    by = {r.cfg_scale: r for r in rows}
    assert (by[7.0].unet_batches, by[1.0].unet_batches) == ((2,), (1,))
    assert by[7.0].unet_calls == by[1.0].unet_calls == 3
    lines = table(rows, 64, 3)
    assert lines[2].startswith("| 7 |") and lines[2].endswith("| 1.00× | 1.00× |")
    assert f"{by[7.0].median_s / by[1.0].median_s:.2f}×" in lines[3]

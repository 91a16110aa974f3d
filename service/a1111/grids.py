"""A1111's image grid (modules/images.py: image_grid): the batch pasted row by row, as A1111 returns and saves it
next to the samples and as the X/Y/Z plot and prompt matrix scripts build theirs."""

from __future__ import annotations

import math

from PIL import Image, ImageColor


def grid_rows(count: int, batch_size: int = 1, rows: int | None = None, *, n_rows: int = -1,
              grid_prevent_empty_spots: bool = False) -> int:
    """The number of rows A1111 lays `count` images out in.

    `rows` given wins; else option `n_rows`: > 0 that many, 0 one row per batch (`batch_size` rows), −1 about
    √count (rounded), or with `grid_prevent_empty_spots` the largest divisor of count not above ⌊√count⌋.
    Never more rows than images.
    """
    if count < 1:
        raise ValueError("a grid needs at least one image")
    if rows is None:
        if n_rows > 0:
            rows = n_rows
        elif n_rows == 0:
            rows = batch_size
        elif grid_prevent_empty_spots:
            rows = math.floor(math.sqrt(count))
            while count % rows != 0:
                rows -= 1
        else:
            rows = round(math.sqrt(count))
    return min(rows, count)


def image_grid(images: list[Image.Image], batch_size: int = 1, rows: int | None = None, *, n_rows: int = -1,
               grid_prevent_empty_spots: bool = False, grid_background_color: str = "#ffffff") -> Image.Image:
    """The grid A1111 makes: cells as large as the largest image, smaller images centred in theirs, empty
    spots in `grid_background_color`, image i at column i % cols, row i // cols."""
    rows = grid_rows(len(images), batch_size, rows, n_rows=n_rows,
                     grid_prevent_empty_spots=grid_prevent_empty_spots)
    if rows < 1:  # A1111 divides by zero here (n_rows 0 with batch_size 0 cannot come from a request)
        raise ValueError(f"a grid needs at least one row, not {rows}")
    cols = math.ceil(len(images) / rows)
    w, h = (max(sizes) for sizes in zip(*(im.size for im in images), strict=True))
    grid = Image.new("RGB", size=(cols * w, rows * h), color=ImageColor.getcolor(grid_background_color, "RGB"))
    for i, im in enumerate(images):
        dx = 0 if im.width == w else (w - im.width) // 2
        dy = 0 if im.height == h else (h - im.height) // 2
        grid.paste(im, box=(i % cols * w + dx, i // cols * h + dy))
    return grid

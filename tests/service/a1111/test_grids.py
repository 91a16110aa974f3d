"""service/a1111/grids.py against A1111 modules/images.py image_grid: its row arithmetic written out by hand
from A1111's code, and where each image lands in the grid."""

import pytest
from PIL import Image

from service.a1111.grids import grid_rows, image_grid

# n images → (rows, cols) with n_rows −1: rows = round(√n), cols = ceil(n / rows) (A1111's default layout).
AUTO = {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2), 5: (2, 3), 6: (2, 3), 7: (3, 3), 8: (3, 3), 9: (3, 3),
        10: (3, 4), 12: (3, 4), 16: (4, 4)}
# grid_prevent_empty_spots: the largest divisor of n not above ⌊√n⌋.
NO_EMPTY = {1: 1, 2: 1, 3: 1, 4: 2, 5: 1, 6: 2, 7: 1, 8: 2, 9: 3, 10: 2, 12: 3, 15: 3, 16: 4, 18: 3}


@pytest.mark.parametrize("n", sorted(AUTO))
def test_auto_rows_round_the_square_root(n):
    rows, cols = AUTO[n]
    assert grid_rows(n) == rows
    tiles = [Image.new("RGB", (8, 6), (i, 0, 0)) for i in range(n)]
    assert image_grid(tiles).size == (cols * 8, rows * 6)


@pytest.mark.parametrize("n", sorted(NO_EMPTY))
def test_prevent_empty_spots_picks_a_divisor(n):
    assert grid_rows(n, grid_prevent_empty_spots=True) == NO_EMPTY[n]


def test_n_rows_option_and_explicit_rows():
    assert grid_rows(8, batch_size=4, n_rows=0) == 4  # 0: one row per batch
    assert grid_rows(6, batch_size=2, n_rows=0) == 2
    assert grid_rows(6, n_rows=3) == 3
    assert grid_rows(3, n_rows=5) == 3  # never more rows than images
    assert grid_rows(6, rows=1, n_rows=3) == 1  # an explicit `rows` wins over the option
    assert grid_rows(4, rows=9) == 4
    with pytest.raises(ValueError):
        grid_rows(0)


def test_pixels_land_row_by_row_and_empty_spots_take_the_background():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = image_grid([Image.new("RGB", (4, 3), c) for c in colours], grid_background_color="#102030")
    assert grid.size == (8, 6)  # 3 images: 2 rows × 2 cols
    assert grid.getpixel((1, 1)) == colours[0]
    assert grid.getpixel((5, 1)) == colours[1]
    assert grid.getpixel((1, 4)) == colours[2]
    assert grid.getpixel((6, 5)) == (0x10, 0x20, 0x30)  # the fourth spot is empty
    assert grid.mode == "RGB"


def test_smaller_images_are_centred_in_the_largest_cell():
    big, small = Image.new("RGB", (6, 4), (200, 0, 0)), Image.new("RGB", (2, 2), (0, 0, 200))
    grid = image_grid([big, small], rows=1)  # default background white
    assert grid.size == (12, 4)
    # the 2×2 image sits at offset ((6−2)//2, (4−2)//2) = (2, 1) inside the second cell
    assert grid.getpixel((6 + 2, 1)) == (0, 0, 200) and grid.getpixel((6 + 3, 2)) == (0, 0, 200)
    assert grid.getpixel((6 + 1, 1)) == (255, 255, 255) and grid.getpixel((6 + 4, 1)) == (255, 255, 255)
    assert grid.getpixel((6 + 2, 0)) == (255, 255, 255) and grid.getpixel((6 + 2, 3)) == (255, 255, 255)


def test_rgba_tiles_paste_into_an_rgb_grid():
    tile = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    grid = image_grid([tile, tile])
    assert grid.mode == "RGB" and grid.getpixel((3, 1)) == (10, 20, 30)

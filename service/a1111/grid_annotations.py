"""Legends around a grid as A1111 draws them (modules/images.py: GridAnnotation, draw_grid_annotations,
draw_prompt_matrix), used by the X/Y/Z plot and prompt matrix scripts.

The layout arithmetic is A1111's: font size (width + height) // 25, line spacing half of it, a left pad of
3/4 of a cell when any row has text, a top pad of the tallest column text plus two line spacings, `margin` px
between cells, words wrapped to the cell width, a too-wide line drawn at a smaller size, inactive texts in the
inactive colour and struck through. The font differs: A1111 ships Roboto-Regular.ttf (option `font` can name
another); sdedge has no font file of its own and uses Pillow's bundled default TrueType font at the same size,
so legends sit where A1111's sit but their glyphs (and so the exact wrapping) differ a little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageColor, ImageDraw, ImageFont


@dataclass
class GridAnnotation:
    text: str = ""
    is_active: bool = True
    size: tuple[int, int] = (0, 0)
    allowed_width: int = field(default=0, repr=False)


@lru_cache(maxsize=64)
def get_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(max(size, 1))


def _wrap(drawing: ImageDraw.ImageDraw, text: str, font, line_length: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if drawing.textlength(line, font=font) <= line_length:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: list[list[GridAnnotation]],
                          ver_texts: list[list[GridAnnotation]], margin: int = 0, *,
                          active_color: str = "#000000", inactive_color: str = "#999999",
                          background_color: str = "#ffffff") -> Image.Image:
    """`im` (a grid of width×height cells) with column texts above and row texts to the left; colours are
    A1111's options grid_text_active_color, grid_text_inactive_color and grid_background_color."""
    color_active = ImageColor.getcolor(active_color, "RGB")
    color_inactive = ImageColor.getcolor(inactive_color, "RGB")
    color_background = ImageColor.getcolor(background_color, "RGB")
    fontsize = (width + height) // 25
    line_spacing = fontsize // 2
    fnt = get_font(fontsize)
    pad_left = 0 if sum(sum(len(line.text) for line in lines) for lines in ver_texts) == 0 else width * 3 // 4
    cols = im.width // width
    rows = im.height // height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"bad number of texts: {len(hor_texts)}x{len(ver_texts)} for a {cols}x{rows} grid")

    calc = ImageDraw.Draw(Image.new("RGB", (1, 1), color_background))
    hor_texts = [list(texts) for texts in hor_texts]
    ver_texts = [list(texts) for texts in ver_texts]
    for texts, allowed in zip(hor_texts + ver_texts, [width] * len(hor_texts) + [pad_left] * len(ver_texts),
                              strict=True):
        items = list(texts)
        texts.clear()
        for line in items:
            texts += [GridAnnotation(x, line.is_active) for x in _wrap(calc, line.text, fnt, allowed)]
        for line in texts:
            bbox = calc.multiline_textbbox((0, 0), line.text, font=fnt)
            line.size = (bbox[2] - bbox[0], bbox[3] - bbox[1])
            line.allowed_width = allowed

    hor_heights = [sum(line.size[1] + line_spacing for line in lines) - line_spacing for lines in hor_texts]
    ver_heights = [sum(line.size[1] + line_spacing for line in lines) - line_spacing * len(lines)
                   for lines in ver_texts]
    pad_top = 0 if sum(hor_heights) == 0 else max(hor_heights) + line_spacing * 2

    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
                       color_background)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))

    d = ImageDraw.Draw(result)

    def draw_texts(x: float, y: float, lines: list[GridAnnotation]) -> None:
        for line in lines:
            font, size = fnt, fontsize
            while d.multiline_textbbox((0, 0), line.text, font=font)[2] > line.allowed_width and size > 0:
                size -= 1
                font = get_font(size)
            d.multiline_text((x, y + line.size[1] / 2), line.text, font=font,
                             fill=color_active if line.is_active else color_inactive, anchor="mm", align="center")
            if not line.is_active:
                d.line((x - line.size[0] // 2, y + line.size[1] // 2, x + line.size[0] // 2, y + line.size[1] // 2),
                       fill=color_inactive, width=4)
            y += line.size[1] + line_spacing

    for col in range(cols):
        draw_texts(pad_left + (width + margin) * col + width / 2, pad_top / 2 - hor_heights[col] / 2, hor_texts[col])
    for row in range(rows):
        draw_texts(pad_left / 2, pad_top + (height + margin) * row + height / 2 - ver_heights[row] / 2,
                   ver_texts[row])
    return result


def draw_prompt_matrix(im: Image.Image, width: int, height: int, all_prompts: list[str], margin: int = 0,
                       **colors: str) -> Image.Image:
    """The prompt matrix legend: the first half of the optional parts across, the rest down, each shown
    active or struck through by the bit of its position (A1111 modules/images.py: draw_prompt_matrix)."""
    prompts = all_prompts[1:]
    boundary = (len(prompts) + 1) // 2
    horiz, vert = prompts[:boundary], prompts[boundary:]
    hor = [[GridAnnotation(x, is_active=pos & (1 << i) != 0) for i, x in enumerate(horiz)]
           for pos in range(1 << len(horiz))]
    ver = [[GridAnnotation(x, is_active=pos & (1 << i) != 0) for i, x in enumerate(vert)]
           for pos in range(1 << len(vert))]
    return draw_grid_annotations(im, width, height, hor, ver, margin, **colors)

"""The printable report of an evidence package: A4 pages drawn with Pillow, saved as PDF.

Pillow is already a dependency and writes image-only PDF pages. Text is drawn
in DejaVu Sans where the system has it (Debian's fonts-dejavu-core): names
and notes in Cyrillic, Greek, Arabic or Latin with diacritics then print as
written. Pillow's bundled font covers little beyond Western European letters
and is the fallback. The pages print and display anywhere, but their text
is not selectable: the machine-readable truth is the JSON beside the report,
and the report says so.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Union

from PIL import Image, ImageDraw, ImageFont

__all__ = ["Block", "render_report"]

#: A4 at 150 dpi, with 15 mm margins.
PAGE = (1240, 1754)
DPI = 150
MARGIN = 90
_SIZES = {"title": 34, "heading": 26, "text": 20, "small": 16}

#: One block of the report: ("title" | "heading" | "text" | "small", str), or ("image", PIL image).
Block = tuple[str, Union[str, Image.Image]]


#: Tried in order; Pillow looks a bare file name up in the system's font folders.
FONTS = ("DejaVuSans.ttf",)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:  # not installed here
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap; a word longer than the line (a hash) is cut by characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if draw.textlength(candidate, font=font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while draw.textlength(word, font=font) > width:
                cut = len(word)
                while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def render_report(blocks: Sequence[Block], *, footer: str = "") -> bytes:
    """Lay ``blocks`` out top to bottom on A4 pages and return the PDF bytes.

    Parameters
    ----------
    blocks : sequence of (kind, content)
        ``kind`` is ``title``, ``heading``, ``text`` or ``small`` with a
        string, or ``image`` with a PIL image (scaled down to the text width
        and at most half a page high, never up).
    footer : str
        Printed at the foot of every page with ``page i of n``.

    Raises
    ------
    ValueError
        An unknown block kind.
    """
    width = PAGE[0] - 2 * MARGIN
    bottom = PAGE[1] - MARGIN - 40
    pages: list[Image.Image] = []
    page: Image.Image | None = None
    draw: ImageDraw.ImageDraw | None = None
    y = 0

    def new_page() -> None:
        nonlocal page, draw, y
        page = Image.new("RGB", PAGE, "white")
        draw = ImageDraw.Draw(page)
        pages.append(page)
        y = MARGIN

    new_page()
    for kind, content in blocks:
        if kind == "image":
            image = content.convert("RGB")
            scale = min(1.0, width / image.width, (PAGE[1] / 2) / image.height)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.LANCZOS)
            if y + image.height > bottom:
                new_page()
            page.paste(image, (MARGIN, y))
            draw.rectangle((MARGIN - 1, y - 1, MARGIN + image.width, y + image.height), outline="black")
            y += image.height + 16
            continue
        if kind not in _SIZES:
            raise ValueError(f"block kind must be one of image, {', '.join(_SIZES)}; got {kind!r}")
        font = _font(_SIZES[kind])
        step = round(_SIZES[kind] * 1.35)
        if kind == "heading":
            y += step // 2
            if y + 3 * step > bottom:  # keep a heading with its first lines
                new_page()
        for line in _wrap(draw, str(content), font, width):
            if y + step > bottom:
                new_page()
            draw.text((MARGIN, y), line, fill="black", font=font)
            y += step
        if kind in ("title", "heading"):
            draw.line((MARGIN, y + 2, MARGIN + width, y + 2), fill="black", width=2 if kind == "title" else 1)
            y += 10
    small = _font(_SIZES["small"])
    for number, sheet in enumerate(pages, 1):
        ImageDraw.Draw(sheet).text((MARGIN, PAGE[1] - MARGIN), f"{footer}   page {number} of {len(pages)}".strip(),
                                   fill="black", font=small)
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=DPI)
    return out.getvalue()

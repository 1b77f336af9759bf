"""Semi-transparent tiled watermark for previews (text, or an image such as a logo)."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from assemblage_assets.core.imaging import DEFAULT_WATERMARK_OPACITY as DEFAULT_OPACITY


@lru_cache(maxsize=32)
def _text_tile(text: str, font_size: int, opacity: float) -> Image.Image:
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(text, stroke_width=max(1, font_size // 16))
    pad = font_size
    tile = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    alpha = round(255 * opacity)
    # White text with a dark outline stays visible on light and dark photos alike.
    ImageDraw.Draw(tile).text(
        (pad - left, pad - top),
        text,
        font=font,
        fill=(255, 255, 255, alpha),
        stroke_width=max(1, font_size // 16),
        stroke_fill=(0, 0, 0, alpha // 2),
    )
    return tile.rotate(30, expand=True, resample=Image.Resampling.BICUBIC)


@lru_cache(maxsize=8)
def _logo(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGBA")


def _image_tile(path: str, width: int, opacity: float) -> Image.Image:
    logo = _logo(path)
    scale = width / logo.width
    tile = logo.resize((max(1, width), max(1, round(logo.height * scale))), Image.Resampling.LANCZOS)
    alpha = tile.getchannel("A").point(lambda a: round(a * opacity))
    tile.putalpha(alpha)
    return tile


def apply_watermark(
    img: Image.Image, *, text: str = "", image_path: str = "", opacity: float = DEFAULT_OPACITY
) -> Image.Image:
    """Return an RGB copy of ``img`` with the watermark tiled across it.

    An image watermark wins over text when both are configured; with neither, ``img`` is
    returned unchanged.
    """
    if not text and not image_path:
        return img.convert("RGB")
    base = img.convert("RGBA")
    return Image.alpha_composite(base, _overlay(base.size, text, image_path, opacity)).convert("RGB")


@lru_cache(maxsize=16)
def _overlay(size: tuple[int, int], text: str, image_path: str, opacity: float) -> Image.Image:
    """The full-size tiled overlay; cached because most previews of a shard share a size."""
    width, height = size
    short_edge = min(size)
    if image_path:
        tile = _image_tile(image_path, max(16, width // 5), opacity)
    else:
        tile = _text_tile(text, max(10, short_edge // 14), opacity)
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    step_x, step_y = tile.width + short_edge // 10, tile.height + short_edge // 10
    for row, y in enumerate(range(-tile.height // 2, height, step_y)):
        offset = (step_x // 2) * (row % 2)  # brick pattern reads as a watermark, not a grid
        for x in range(-tile.width + offset, width, step_x):
            overlay.alpha_composite(tile, (max(x, 0), max(y, 0)), (max(-x, 0), max(-y, 0)))
    return overlay

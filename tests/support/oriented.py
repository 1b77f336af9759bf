"""Images stored the way a camera or scanner writes them: the pixels turned by the inverse of
their orientation tag, so that applying the tag gives back an upright landscape with a marker
block in its top-left corner (the contract of ``assemblage_assets.dev.sample_data``)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from assemblage_assets.dev.sample_data import MARKER_RGB, STORE_TRANSPOSE

UPRIGHT_SIZE = (480, 240)  # landscape, 2:1, so a missing or extra quarter turn shows in the size
MARKER_SIDE = 60
BACKGROUND_RGB = (60, 120, 200)

# name -> (Pillow mode of the stored pixels, TIFF save options). Uncompressed grey and RGBA
# single-strip files are the ones Pillow memory-maps when opened by file name.
TIFF_VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "raw-rgb": ("RGB", {}),
    "raw-grey": ("L", {}),
    "raw-rgba": ("RGBA", {}),
    "lzw-rgb": ("RGB", {"compression": "tiff_lzw"}),
    "group4-1bit": ("1", {"compression": "group4"}),
}
GREY_MODES = ("1", "L")


def upright(mode: str) -> Image.Image:
    """The upright picture in ``mode``: marker top-left (red, or black on white for grey and 1-bit)."""
    if mode in GREY_MODES:
        img = Image.new(mode, UPRIGHT_SIZE, 255 if mode == "L" else 1)
        ImageDraw.Draw(img).rectangle((0, 0, MARKER_SIDE - 1, MARKER_SIDE - 1), fill=0)
        return img
    img = Image.new("RGB", UPRIGHT_SIZE, BACKGROUND_RGB)
    ImageDraw.Draw(img).rectangle((0, 0, MARKER_SIDE - 1, MARKER_SIDE - 1), fill=MARKER_RGB)
    return img.convert(mode)


def write_oriented_tiff(path: Path, variant: str, orientation: int, **save: object) -> Path:
    """A TIFF of ``variant`` whose tag 274 is ``orientation`` and whose pixels are stored turned."""
    mode, options = TIFF_VARIANTS[variant]
    img = upright(mode)
    if (turn := STORE_TRANSPOSE[orientation]) is not None:
        img = img.transpose(turn)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "TIFF", tiffinfo={274: orientation}, **options, **save)
    return path


def is_marker(rgb: tuple[int, ...], variant: str) -> bool:
    r, g, b = rgb[:3]
    if TIFF_VARIANTS[variant][0] in GREY_MODES:
        return r < 80 and g < 80 and b < 80
    return r > 150 and g < 100 and b < 100


def assert_upright(img: Image.Image, variant: str, what: str) -> None:
    """Landscape 2:1 with the marker in the top-left corner and in no other corner."""
    assert img.width > img.height and abs(img.width - 2 * img.height) <= 2, f"{what}: {img.size} is not upright"
    rgb = img.convert("RGB")
    w, h = rgb.size
    inset = max(2, min(w, h) // 40)
    corners = {
        "top-left": (inset, inset),
        "top-right": (w - 1 - inset, inset),
        "bottom-left": (inset, h - 1 - inset),
        "bottom-right": (w - 1 - inset, h - 1 - inset),
    }
    marked = [name for name, xy in corners.items() if is_marker(rgb.getpixel(xy), variant)]
    assert marked == ["top-left"], f"{what}: marker found at {marked or 'no corner'}"

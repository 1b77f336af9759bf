"""Derivation of odd modes, watermarks and palettes, checked on pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops
from support.bigtiff import bigtiff_bytes
from support.oriented import TIFF_VARIANTS, UPRIGHT_SIZE, assert_upright, write_oriented_tiff

from assemblage_assets.core.imaging import DerivativeSpec, sniff_format, to_display_mode, write_thumbnail
from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images.derive import derive_image, dominant_colours


def derive(tmp_path: Path, img: Image.Image, fmt: str, spec: DerivativeSpec | None = None, **save) -> tuple:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / f"src.{fmt.lower()}"
    img.save(src, fmt, **save)
    result = derive_image(str(src), "img", tmp_path / "cache", spec or DerivativeSpec())
    assert result.ok, result.error_message
    return result, Image.open(tmp_path / "cache/thumbnail/img.webp"), Image.open(tmp_path / "cache/watermarked/img.jpg")


def test_sixteen_bit_grey_keeps_its_tones(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (64, 1))
    result, thumb, preview = derive(tmp_path, Image.fromarray(ramp), "PNG")
    grey = np.asarray(preview.convert("L"), dtype=float)
    assert grey[:, :10].mean() < 60 and grey[:, -10:].mean() > 190  # a ramp, not clipped to white


def test_cmyk_and_palette_transparency_and_la(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (400, 300), (0, 255, 255, 0))  # pure red in CMYK
    _, thumb, preview = derive(tmp_path, cmyk, "JPEG")
    r, g, b = preview.getpixel((5, 5))
    assert r > 200 and g < 80 and b < 80

    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pal.paste(1, (32, 0, 64, 64))
    result, thumb, preview = derive(tmp_path, pal, "PNG", transparency=0)
    assert thumb.mode == "RGBA" and thumb.getpixel((5, 5))[3] == 0  # transparent half stays transparent
    assert preview.getpixel((5, 5))[0] > 200  # flattened on white for the JPEG preview
    assert [c["hex"] for c in result.palette] == ["#00ff00"]  # transparent pixels are not a colour

    alpha = Image.new("L", (50, 50), 255)
    alpha.paste(0, (0, 0, 25, 50))
    la = Image.merge("LA", (Image.new("L", (50, 50), 40), alpha))
    _, thumb, _ = derive(tmp_path, la, "PNG")
    assert thumb.mode == "RGBA" and thumb.getpixel((5, 5))[3] == 0 and thumb.getpixel((45, 5))[3] == 255


def test_animated_images_use_the_first_frame_and_count_frames(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (120, 80), colour) for colour in ("blue", "red", "green")]
    src = tmp_path / "anim.webp"
    frames[0].save(src, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    result = derive_image(str(src), "a", tmp_path / "cache", DerivativeSpec(watermark_text=""))
    assert result.ok and result.frame_count == 3
    r, g, b = Image.open(tmp_path / "cache/watermarked/a.jpg").getpixel((60, 40))
    assert b > 200 and r < 50


def test_watermark_text_and_image(tmp_path: Path) -> None:
    photo = make_photo(1600, 1200, seed=3)
    plain = derive(tmp_path / "plain", photo, "JPEG", DerivativeSpec(watermark_text=""))[2]
    text = derive(tmp_path / "text", photo, "JPEG", DerivativeSpec(watermark_text="© Assemblage"))[2]
    logo_path = tmp_path / "logo.png"
    logo = Image.new("RGBA", (200, 80), (255, 0, 0, 255))
    logo.save(logo_path)
    logo_marked = derive(tmp_path / "logo", photo, "JPEG", DerivativeSpec(watermark_image=str(logo_path)))[2]
    assert plain.size == text.size == logo_marked.size == (1200, 900)
    diff = np.asarray(ImageChops.difference(plain, text).convert("L"), dtype=float)
    marked = diff > 12
    assert 0.02 < marked.mean() < 0.5  # tiled across the image, not covering it
    assert diff[marked].mean() < 80  # semi-transparent: the photo still shows through
    # the red logo tints the preview red where tiled
    red_gain = np.asarray(logo_marked, dtype=float)[..., 0] - np.asarray(plain, dtype=float)[..., 0]
    assert (red_gain > 30).mean() > 0.05


def test_dominant_colours_shares() -> None:
    img = Image.new("RGB", (100, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 100, 25))
    palette = dominant_colours(img)
    assert palette[0] == {"hex": "#ff0000", "share": 0.75}
    assert palette[1] == {"hex": "#0000ff", "share": 0.25}


def test_display_mode_covers_every_mode() -> None:
    for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "LA", "PA"):
        out = to_display_mode(Image.new(mode, (4, 4)))
        assert out.mode in ("RGB", "RGBA"), mode


# --- TIFF orientation: Pillow applies it in load() for some files, and not cleanly for all --------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("variant", TIFF_VARIANTS)
def test_tiff_orientations_come_out_upright(tmp_path: Path, variant: str, orientation: int) -> None:
    src = write_oriented_tiff(tmp_path / f"{variant}-{orientation}.tif", variant, orientation)
    result = derive_image(str(src), "t", tmp_path / "cache", DerivativeSpec(watermark_text=""))
    assert result.ok, result.error_message
    assert result.thumbnail_size == (300, 150) and result.preview_size == UPRIGHT_SIZE
    with Image.open(tmp_path / "cache/thumbnail/t.webp") as thumb:
        assert_upright(thumb, variant, f"thumbnail of {variant} orientation {orientation}")
    with Image.open(tmp_path / "cache/watermarked/t.jpg") as preview:
        assert_upright(preview, variant, f"preview of {variant} orientation {orientation}")


@pytest.mark.parametrize("orientation", (1, 3, 6, 7))
@pytest.mark.parametrize("variant", ("raw-grey", "group4-1bit"))
def test_tiff_orientation_from_memory_is_upright(tmp_path: Path, variant: str, orientation: int) -> None:
    """The vehicle backfill decodes downloads from bytes: same result as from a path."""
    src = write_oriented_tiff(tmp_path / "src.tif", variant, orientation)
    size = write_thumbnail(io.BytesIO(src.read_bytes()), tmp_path / "thumb.webp", DerivativeSpec())
    assert size == (300, 150)
    with Image.open(tmp_path / "thumb.webp") as thumb:
        assert_upright(thumb, variant, f"thumbnail of {variant} orientation {orientation} from bytes")


# --- BigTIFF ------------------------------------------------------------------------------------


def _bigtiff_photo() -> Image.Image:
    img = make_photo(640, 400, seed=11)
    img.paste((235, 25, 25), (0, 0, 40, 40))
    return img


def test_bigtiff_magic_bytes_are_tiff(tmp_path: Path) -> None:
    pillow_written = tmp_path / "pillow.tif"
    _bigtiff_photo().save(pillow_written, "TIFF", big_tiff=True)
    assert pillow_written.read_bytes()[:4] == b"II+\x00"
    assert sniff_format(pillow_written.read_bytes()[:16]) == "TIFF"
    for byte_order, magic in (("II", b"II+\x00"), ("MM", b"MM\x00+")):
        data = bigtiff_bytes(_bigtiff_photo(), byte_order)
        assert data[:4] == magic and sniff_format(data[:16]) == "TIFF"
    assert sniff_format(b"II*\x00\x08\x00\x00\x00") == sniff_format(b"MM\x00*\x00\x00\x00\x08") == "TIFF"


def test_bigtiff_is_derived(tmp_path: Path) -> None:
    src = tmp_path / "big.tif"
    src.write_bytes(bigtiff_bytes(_bigtiff_photo()))
    with Image.open(src) as img:  # Pillow reads the hand-built file as a BigTIFF
        assert (img.format, img.size, img.mode) == ("TIFF", (640, 400), "RGB")
        assert img.getpixel((5, 5)) == (235, 25, 25)
    result = derive_image(str(src), "b", tmp_path / "cache", DerivativeSpec(watermark_text=""))
    assert result.ok, result.error_message
    assert result.thumbnail_size == (300, 188) and result.preview_size == (640, 400)
    with Image.open(tmp_path / "cache/thumbnail/b.webp") as thumb:
        r, g, b = thumb.convert("RGB").getpixel((3, 3))
        assert r > 150 and g < 100 and b < 100


# --- thumbnail size and format (THUMBNAIL_SIZE, THUMBNAIL_FORMAT) ----------------------------------


def _half_clear() -> Image.Image:
    img = Image.new("RGBA", (800, 400), (0, 0, 255, 255))
    img.paste((0, 0, 0, 0), (0, 0, 400, 400))
    return img


@pytest.mark.parametrize(
    ("fmt", "pillow_format", "ext", "mode"),
    [("webp", "WEBP", "webp", "RGBA"), ("jpeg", "JPEG", "jpg", "RGB"), ("png", "PNG", "png", "RGBA")],
)
def test_thumbnail_format_and_box(tmp_path: Path, fmt: str, pillow_format: str, ext: str, mode: str) -> None:
    src = tmp_path / "src.png"
    _half_clear().save(src)
    spec = DerivativeSpec(thumbnail_box=160, thumbnail_format=fmt)
    result = derive_image(str(src), "f", tmp_path / "cache", spec)
    assert result.ok and result.thumbnail_key == f"thumbnail/f.{ext}" and result.thumbnail_size == (160, 80)
    assert [p.name for p in (tmp_path / "cache/thumbnail").iterdir()] == [f"f.{ext}"]
    with Image.open(tmp_path / "cache" / result.thumbnail_key) as thumb:
        assert (thumb.format, thumb.mode, thumb.size) == (pillow_format, mode, (160, 80))
        left = thumb.getpixel((10, 40))
        assert left[3] == 0 if mode == "RGBA" else min(left) > 240  # JPEG: flattened on white


def test_thumbnail_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="thumbnail_format"):
        DerivativeSpec(thumbnail_format="gif")
    with pytest.raises(ValueError, match="thumbnail_box"):
        DerivativeSpec(thumbnail_box=0)
    assert DerivativeSpec().thumbnail_ext == "webp" and DerivativeSpec(thumbnail_format="jpg").thumbnail_ext == "jpg"

"""Imaging helpers shared by the derivatives stage, the vehicle backfill and local CLIP.

Format detection from magic bytes, the content id of an image, and one decode path: upright
per EXIF, any Pillow mode brought to 8-bit RGB(A), shrunk without upscaling, saved atomically.
Nothing here touches the database or Dagster.
"""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from assemblage_assets.core.settings import DEFAULT_IMAGE_EXTENSIONS

APPROVED_EXTENSIONS = DEFAULT_IMAGE_EXTENSIONS  # the default; settings.image_extensions() is what applies
# Detected format -> (Pillow formats allowed to open it, extension used for the published original)
APPROVED_FORMATS = {
    "JPEG": (["JPEG", "MPO"], "jpg"),
    "PNG": (["PNG"], "png"),
    "WEBP": (["WEBP"], "webp"),
    "TIFF": (["TIFF"], "tiff"),
    "HEIF": (["HEIF"], "heic"),  # through pillow-heif (see register_heif)
    "AVIF": (["AVIF"], "avif"),  # Pillow's own plugin (libavif)
}
# ISO base media ("ftyp") brands: AVIF, then HEIF images; any other ftyp is a video or a raw.
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
# uuid5 namespace for image ids: the same bytes always get the same id, on any machine.
IMAGE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/assemblage/images")

THUMBNAIL_BOX = 300
THUMBNAIL_FORMAT = "webp"
# THUMBNAIL_FORMAT value -> (Pillow format, extension of the thumbnail's object key)
THUMBNAIL_FORMATS = {
    "webp": ("WEBP", "webp"),
    "jpeg": ("JPEG", "jpg"),
    "jpg": ("JPEG", "jpg"),
    "png": ("PNG", "png"),
}
PREVIEW_LONG_EDGE = 1200
DEFAULT_WATERMARK_OPACITY = 0.22

# EXIF orientation -> the transpose that makes the image upright (same table as ImageOps.exif_transpose)
ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def sniff_format(head: bytes) -> str | None:
    """Format from magic bytes (the extension is never trusted)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    # Classic TIFF (42) and BigTIFF (43), little- and big-endian. Pillow reads little-endian
    # BigTIFF; big-endian BigTIFF it cannot open (13.0), so those fail as a TIFF that does not decode.
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM":
        return "BMP"
    if head[4:8] == b"ftyp":
        return _ftyp_format(head)
    if head.startswith(b"%PDF"):
        return "PDF"
    return None


def _ftyp_format(head: bytes) -> str:
    """AVIF, HEIF, or what else an ISO base media file is, from its major and compatible brands
    (as many as ``head`` holds: 16 bytes give the major brand, 32 up to four compatible ones)."""
    box_size = int.from_bytes(head[:4], "big")
    end = min(len(head), box_size) if box_size >= 16 else len(head)
    major = head[8:12]
    if major in _AVIF_BRANDS:
        return "AVIF"
    if major in _HEIF_BRANDS - {b"mif1", b"msf1"}:
        return "HEIF"
    # A generic major brand (mif1, or another): the compatible brands say which codec.
    brands = {major} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    if head[8:12] == b"crx ":
        return "CR3"
    return "QuickTime" if head[8:12] == b"qt  " else "MP4"


@functools.cache
def register_heif() -> None:
    """Teach Pillow HEIF/HEIC (pillow-heif), once per process and only when a HEIF file shows up.
    pillow-heif applies HEIF's own rotation and mirroring (irot/imir) on decode and resets the
    EXIF orientation to 1, so ``orientation()`` then reports nothing left to do."""
    from pillow_heif import register_heif_opener

    # Only the primary image is ever decoded: no thumbnails, depth or auxiliary images.
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def prepare_decoder(detected: str | None) -> None:
    """Register the plugin ``detected`` needs (from ``sniff_format``) before ``Image.open``."""
    if detected == "HEIF":
        register_heif()


def missing_decoder(detected: str | None) -> str | None:
    """Why this installation cannot decode ``detected`` (None when it can)."""
    if detected == "AVIF":
        from PIL import features

        if not features.check("avif"):
            return "this Pillow has no AVIF support (PIL.features.check('avif') is False; Pillow's wheels bundle libavif)"
    return None


def image_id_for(content_hash: str) -> uuid.UUID:
    return uuid.uuid5(IMAGE_ID_NAMESPACE, content_hash)


@dataclass(frozen=True)
class DerivativeSpec:
    thumbnail_box: int = THUMBNAIL_BOX  # pixels of the square box the thumbnail fits in
    preview_long_edge: int = PREVIEW_LONG_EDGE
    watermark_text: str = "assemblage"
    watermark_image: str = ""
    watermark_opacity: float = DEFAULT_WATERMARK_OPACITY
    max_pixels: int = 120_000_000
    preview_quality: int = 85
    thumbnail_quality: int = 80
    thumbnail_format: str = THUMBNAIL_FORMAT  # a key of THUMBNAIL_FORMATS

    def __post_init__(self) -> None:
        if self.thumbnail_format not in THUMBNAIL_FORMATS:
            raise ValueError(
                f"thumbnail_format must be one of {', '.join(THUMBNAIL_FORMATS)}, got {self.thumbnail_format!r}"
            )
        if self.thumbnail_box < 1:
            raise ValueError(f"thumbnail_box must be at least 1 pixel, got {self.thumbnail_box}")

    @property
    def thumbnail_ext(self) -> str:
        """Extension of the thumbnail's file and object key (``webp``, ``jpg``, ``png``)."""
        return THUMBNAIL_FORMATS[self.thumbnail_format][1]


def frame_count(img: Image.Image) -> int:
    try:
        return max(1, int(getattr(img, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - n_frames can raise TypeError/EOFError on damaged files
        return 1


def orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when missing or broken)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in ORIENTATION_FIX else 1
    except Exception:  # noqa: BLE001 - broken EXIF must not stop derivation
        return 1


@contextmanager
def open_image(source: str | os.PathLike[str] | BinaryIO) -> Iterator[Image.Image]:
    """``Image.open`` for decoding; a path is read through a file object of our own.

    Opened by name, Pillow memory-maps an uncompressed single-strip file (grey, RGBA, CMYK,
    16-bit, ...) at the size it reports, which for a TIFF with orientation 5-8 is already the
    upright (turned) size: the stored rows are read at the wrong width, and the image comes out
    scrambled and a quarter turn short. Read from a file object, Pillow decodes those files like
    every other TIFF (then ``load_oriented`` applies).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            _prepare_for(fh)
            with Image.open(fh) as img:
                yield img
    else:
        _prepare_for(source)
        with Image.open(source) as img:
            yield img


def _prepare_for(fh: BinaryIO) -> None:
    if fh.seekable():
        start = fh.tell()
        prepare_decoder(sniff_format(fh.read(32)))
        fh.seek(start)
    else:
        register_heif()  # cannot peek: be ready for anything


def load_oriented(img: Image.Image, before: int) -> int:
    """``img.load()``; returns the EXIF orientation still to apply to the loaded pixels.

    ``before`` is ``orientation(img)`` read before loading. JPEG, PNG and WebP decoders never
    apply it: it is all still to do. For a TIFF the answer comes from what load() did to this
    file, since Pillow's TIFF decoder applies the orientation itself in most cases (Pillow >= 10.1
    transposes in ``load_end`` and drops tag 274) but not on every path or version: a quarter turn
    (5-8) was applied when the decoded size is the stored size turned; otherwise the tag gone
    after load() means applied, the tag still there means not applied.
    """
    stored = _tiff_stored_size(img) if img.format == "TIFF" else None
    img.load()
    if stored is None or before == 1:
        return before
    dropped = orientation(img) != before
    if before in (5, 6, 7, 8) and stored[0] != stored[1]:
        if img.size == (stored[1], stored[0]):
            return 1  # Pillow turned the pixels (whether or not it also dropped the tag)
        if dropped:
            raise OSError(
                f"Pillow dropped TIFF orientation {before} without turning the pixels "
                f"(stored {stored[0]}x{stored[1]}, decoded {img.width}x{img.height})"
            )
        return before
    return 1 if dropped else before


def _tiff_stored_size(img: Image.Image) -> tuple[int, int] | None:
    """Width and height of the pixels as stored (tags 256/257); Pillow reports 5-8 turned."""
    tags = getattr(img, "tag_v2", None)
    try:
        width, length = int(tags[256]), int(tags[257])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return width, length


def to_display_mode(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB or RGBA without clipping or losing transparency."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Scale to the image's own range: convert('RGB') clips 16-bit values to white.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    if mode == "P" and img.palette is not None and img.palette.mode == "RGBA":
        return img.convert("RGBA")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def fit(img: Image.Image, box_w: int, box_h: int) -> Image.Image:
    """Scale down to fit the box, keeping the aspect ratio; never upscale."""
    scale = min(box_w / img.width, box_h / img.height)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # reducing_gap: integer box-reduce first, then bicubic for the last factor < 2x (Pillow's
    # thumbnail() default). Bicubic costs ~2 dB PSNR against Lanczos here, far below what
    # the JPEG/WebP encoders lose anyway, and is the main step towards libvips' speed.
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def decode_upright(source: str | os.PathLike[str] | BinaryIO, long_edge: int) -> tuple[Image.Image, int]:
    """Decode once, as little as needed for ``long_edge``; upright and in a display mode.
    Returns the image and the file's frame count."""
    with open_image(source) as img:
        frames = frame_count(img)
        if frames > 1:
            img.seek(0)  # animations and multi-page files: the first frame stands for the image
        # Before load(): for PNG this reads the trailing chunks, and a damaged trailing chunk
        # (pixels intact) then costs us the EXIF only, not the image.
        turn = orientation(img)
        if img.format in ("JPEG", "MPO"):
            # DCT-domain downscale: decode at 1/2, 1/4 or 1/8 while staying >= the preview size.
            scale = max(img.size) / long_edge
            if scale >= 2:
                img.draft(None, (int(img.width / scale), int(img.height / scale)))
        turn = load_oriented(img, turn)  # TIFF: what Pillow's decoder left to do
        rgb = to_display_mode(img)
    fix = ORIENTATION_FIX.get(turn)
    if fix is not None:
        # Shrink first, then rotate: transposing a 1200 px image is far cheaper than a 12 MP one.
        rgb = fit(rgb, long_edge, long_edge).transpose(fix)
    return rgb, frames


def atomic_save(img: Image.Image, target: Path, fmt: str, **params: object) -> None:
    """Write next to the target and rename, so a crash never leaves a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, fmt, **params)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flatten_on_white(img: Image.Image) -> Image.Image:
    """RGBA composited on white as RGB (for JPEG, which has no alpha); other modes unchanged."""
    if img.mode != "RGBA":
        return img
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, img).convert("RGB")


def save_thumbnail(thumbnail: Image.Image, target: Path, spec: DerivativeSpec) -> None:
    """In the spec's format: WebP and PNG keep alpha, JPEG is flattened on white like previews."""
    fmt = THUMBNAIL_FORMATS[spec.thumbnail_format][0]
    if fmt == "WEBP":
        atomic_save(thumbnail, target, "WEBP", quality=spec.thumbnail_quality, method=4)
    elif fmt == "JPEG":
        atomic_save(flatten_on_white(thumbnail), target, "JPEG", quality=spec.thumbnail_quality, optimize=True)
    else:
        atomic_save(thumbnail, target, fmt)


def write_thumbnail(source: str | BinaryIO, target: Path, spec: DerivativeSpec) -> tuple[int, int]:
    """Only the thumbnail of the derivatives stage (same decode, resampling and encoding),
    written to ``target``; returns its size. For images already in memory (downloads). Raises
    Pillow's errors (``OSError``, ``DecompressionBombError``, ...) when the image cannot be decoded."""
    Image.MAX_IMAGE_PIXELS = spec.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upright, _ = decode_upright(source, spec.preview_long_edge)
    preview = fit(upright, spec.preview_long_edge, spec.preview_long_edge)
    thumbnail = fit(preview, spec.thumbnail_box, spec.thumbnail_box)
    save_thumbnail(thumbnail, target, spec)
    return thumbnail.size

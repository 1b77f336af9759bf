"""Synthetic, deterministic sample image trees for demos, tests and benchmarks.

``write_sample_tree`` writes a small "camera dump" that exercises the ingestion edge cases:
shard names with spaces and unicode, a nested folder, a top-level shard, every EXIF
orientation, GPS in both hemispheres, non-JPEG formats, broken files and a non-image file.

Orientation contract (tests rely on it): every photographic JPEG is an *upright landscape*
scene (width > height) with a bright red block in its top-left corner, stored the way a
camera stores it, i.e. with the inverse of its EXIF orientation applied to the pixels.
``ImageOps.exif_transpose`` on any of them therefore returns a landscape image with the red
marker top-left, whatever its orientation tag (1-8).
"""

from __future__ import annotations

import io
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational

__all__ = ["MARKER_RGB", "STORE_TRANSPOSE", "SampleTree", "make_photo", "photo_exif", "write_sample_tree"]

MARKER_RGB = (235, 25, 25)

# Inverse of the transform ImageOps.exif_transpose applies for each orientation value:
# 2/3/4/5/7 are their own inverse, 6 and 8 (90-degree rotations) swap.
STORE_TRANSPOSE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

# (sky top, sky bottom, ground near horizon, ground foreground): no red-dominant colours,
# so only the orientation marker ever reads as "red".
_PALETTES = [
    ((70, 120, 200), (185, 210, 235), (95, 125, 70), (45, 70, 35)),  # clear day, fields
    ((40, 60, 120), (230, 190, 150), (80, 75, 85), (30, 30, 40)),  # dusk over a city
    ((150, 160, 170), (205, 210, 215), (120, 115, 100), (75, 70, 60)),  # overcast, stone
    ((10, 15, 40), (45, 50, 95), (40, 40, 55), (15, 15, 25)),  # night
    ((90, 170, 225), (200, 230, 245), (210, 195, 150), (175, 160, 120)),  # beach
]

_CAMERAS = [
    ("Canon", "Canon EOS R6", "IMG_{:04d}.JPG"),
    ("NIKON CORPORATION", "NIKON Z 6_2", "DSC_{:04d}.JPG"),
    ("FUJIFILM", "X-T4", "DSCF{:04d}.JPG"),
    ("Apple", "iPhone 14 Pro", "IMG_{:04d}.jpeg"),
    ("SONY", "ILCE-7M3", "DSC{:05d}.jpg"),
    ("OLYMPUS CORPORATION", "E-M10MarkIII", "P{:07d}.JPG"),
]

# City centres (signed lat, lon); photos get a little jitter around them.
_CITIES = {
    "buenos_aires": (-34.6037, -58.3816),
    "valparaiso": (-33.0472, -71.6127),
    "mallorca": (39.5696, 2.6502),
    "tokyo": (35.6595, 139.7005),
    "sydney": (-33.8568, 151.2153),
    "new_york": (40.7580, -73.9855),
}


def make_photo(width: int, height: int, seed: int) -> Image.Image:
    """Photographic-looking RGB image: sky/ground gradients, sun glow, blotchy mid-frequency
    texture, hard-edged shapes and per-pixel grain, so JPEG sizes resemble real photos.

    Deterministic per ``seed``; ~0.3 s for 12 MP (smooth parts are built at 1/4 resolution
    and upscaled in C, grain comes from raw random bytes).
    """
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    rng = np.random.default_rng(seed)
    sky_top, sky_bot, gnd_top, gnd_bot = (
        np.array(c, np.float32) for c in _PALETTES[int(rng.integers(len(_PALETTES)))]
    )

    # Smooth layer at low resolution.
    sw, sh = max(2, width // 4), max(2, height // 4)
    y = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, sw, dtype=np.float32)[None, :, None]
    horizon = rng.uniform(0.45, 0.65) + 0.04 * np.sin(
        2 * np.pi * (rng.uniform(1, 3) * x + rng.random())
    )
    t_sky = np.clip(y / horizon, 0, 1)
    t_gnd = np.clip((y - horizon) / (1 - horizon), 0, 1)
    base = np.where(
        y < horizon, sky_top + (sky_bot - sky_top) * t_sky, gnd_top + (gnd_bot - gnd_top) * t_gnd
    )
    sun_x, sun_y = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.4)
    glow = np.exp(-((x - sun_x) ** 2 * 4 + (y - sun_y) ** 2 * 9) * 12)
    base = base + glow * np.array([70, 60, 40], np.float32)
    # Mid-frequency texture (foliage/clouds), stronger below the horizon.
    tex = rng.standard_normal((sh, sw, 1), dtype=np.float32)
    base = base + tex * np.where(y < horizon, 4.0, 14.0)
    vignette = 1.0 - 0.35 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    base = np.clip(base * vignette, 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB").resize((width, height), Image.Resampling.BICUBIC)

    # Hard-edged shapes ("buildings", "trees", "rocks"); red channel capped so none reads red.
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 16))):
        # Muted colours: half random, half ground tone, red capped.
        r, g, b = (int(v) for v in (rng.integers(20, 230, 3) + gnd_top) / 2)
        colour = (min(r, max(g, b)), g, b)
        cx, cy = rng.uniform(0, width), rng.uniform(height * 0.35, height)
        sx, sy = rng.uniform(0.02, 0.12) * width, rng.uniform(0.05, 0.3) * height
        box = (cx - sx, cy - sy, cx + sx, cy + sy)
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(cx, cy - sy), (cx - sx, cy + sy), (cx + sx, cy + sy)], fill=colour)

    # Grain: luma noise (triangular, ~±15) plus weaker chroma noise, from raw random bytes.
    arr = np.asarray(img, dtype=np.int16).copy()
    raw = np.frombuffer(rng.bytes(width * height * 2), np.uint8).reshape(height, width, 2)
    luma = (raw[..., 0] & 15).astype(np.int16) + (raw[..., 0] >> 4) - 15
    arr += luma[..., None]
    arr += ((raw[..., 1:2] & 7).astype(np.int16) - 4) * np.array([1, 0, -1], np.int16)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    deg = int(value)
    minutes = int((value - deg) * 60)
    seconds = round(((value - deg) * 60 - minutes) * 60 * 1000)
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(seconds, 1000)


def photo_exif(
    *,
    make: str,
    model: str,
    taken: datetime,
    orientation: int = 1,
    gps: tuple[float, float] | None = None,
    iso: int = 100,
    f_number: float = 2.8,
    exposure: tuple[int, int] = (1, 125),
    focal_length_mm: float = 35.0,
) -> Image.Exif:
    """Camera-like EXIF: Make/Model/Orientation/DateTime in IFD0, capture settings in the
    Exif IFD and, if ``gps=(lat, lon)`` is given (signed degrees), a GPS IFD with
    degree/minute/second rationals and N/S/E/W refs."""
    if orientation not in STORE_TRANSPOSE:
        raise ValueError(f"orientation must be 1..8, got {orientation}")
    stamp = taken.strftime("%Y:%m:%d %H:%M:%S")
    exif = Image.Exif()
    exif[Base.Make] = make
    exif[Base.Model] = model
    exif[Base.Orientation] = orientation
    exif[Base.DateTime] = stamp
    exif[Base.Software] = "assemblage sample-data"

    sub = exif.get_ifd(IFD.Exif)  # mutable dict owned by exif, serialised by tobytes()
    sub[Base.DateTimeOriginal] = stamp
    sub[Base.DateTimeDigitized] = stamp
    sub[Base.ISOSpeedRatings] = iso
    sub[Base.FNumber] = IFDRational(round(f_number * 10), 10)
    sub[Base.ExposureTime] = IFDRational(*exposure)
    sub[Base.FocalLength] = IFDRational(round(focal_length_mm * 10), 10)

    if gps is not None:
        lat, lon = gps
        g = exif.get_ifd(IFD.GPSInfo)
        g[GPS.GPSVersionID] = b"\x02\x03\x00\x00"
        g[GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
        g[GPS.GPSLatitude] = _dms(lat)
        g[GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
        g[GPS.GPSLongitude] = _dms(lon)
    return exif


@dataclass
class SampleTree:
    root: Path
    files: int  # files written
    expected_ok: int  # files that should ingest fine
    expected_failed: int  # broken files that should be recorded as failed
    expected_rejected: int  # non-image extension, should be recorded as rejected
    shards: list[str]  # first-level directory names ("" for top level not included)
    has_top_level: bool = True  # files directly under root (the "" shard) exist
    # Paths relative to root (POSIX separators), for exact per-file assertions.
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _upright_photo(size: tuple[int, int], seed: int) -> Image.Image:
    img = make_photo(size[0], size[1], seed)
    side = max(4, min(size) // 6)
    ImageDraw.Draw(img).rectangle((0, 0, side - 1, side - 1), fill=MARKER_RGB)
    return img


def _encode_jpeg(img: Image.Image, exif: Image.Exif | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88, exif=exif or Image.Exif(), **kw)
    return buf.getvalue()


class _TreeWriter:
    """Writes the files of one sample tree and remembers which bucket each belongs to."""

    def __init__(self, root: Path, seed: int, size: tuple[int, int]) -> None:
        self.root, self.seed, self.size = root, seed, size
        self.rng = np.random.default_rng(seed)
        self.counter = 0  # drives orientation cycling, file numbering and per-photo seeds
        self.ok: list[str] = []
        self.failed: list[str] = []
        self.rejected: list[str] = []

    def write(self, rel: str, data: bytes, bucket: list[str]) -> None:
        rel = unicodedata.normalize("NFC", rel)  # one canonical spelling for unicode names
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        bucket.append(rel)

    def photo(self, folder: str, year_range: tuple[int, int], city: str | None, name: str = "") -> None:
        self.counter += 1
        rng, counter = self.rng, self.counter
        make, model, pattern = _CAMERAS[int(rng.integers(len(_CAMERAS)))]
        start = datetime(year_range[0], 1, 1)
        span = (datetime(year_range[1], 12, 31) - start).total_seconds()
        taken = start + timedelta(seconds=int(rng.uniform(0, span)))
        gps = None
        if city is not None:
            lat, lon = _CITIES[city]
            gps = (lat + rng.uniform(-0.02, 0.02), lon + rng.uniform(-0.02, 0.02))
        orientation = (counter - 1) % 8 + 1
        exif = photo_exif(
            make=make,
            model=model,
            taken=taken,
            orientation=orientation,
            gps=gps,
            iso=int(rng.choice([100, 200, 400, 800, 1600, 3200])),
            f_number=float(rng.choice([1.8, 2.8, 4.0, 5.6, 8.0])),
            exposure=(1, int(rng.choice([30, 60, 125, 250, 1000]))),
            focal_length_mm=float(rng.choice([6.9, 23.0, 35.0, 50.0, 85.0])),
        )
        img = _upright_photo(self.size, self.seed * 1000 + counter)
        if (t := STORE_TRANSPOSE[orientation]) is not None:
            img = img.transpose(t)  # store as the camera would: inverse of the EXIF transform
        name = name or pattern.format(100 + counter + self.seed % 1000)
        rel = f"{folder}/{name}" if folder else name
        self.write(rel, _encode_jpeg(img, exif, progressive=counter % 3 == 0), self.ok)

    def photos(self, per_shard: int) -> None:
        # Top-level shard: a single cover photo in the southern/eastern hemisphere.
        self.photo("", (2021, 2021), "sydney", name="cover.jpg")
        nested = per_shard // 3
        for i in range(per_shard):
            folder = "street-2019/day2" if i >= per_shard - nested else "street-2019"
            self.photo(folder, (2019, 2019), "valparaiso" if folder.endswith("day2") else "buenos_aires")
        for i in range(per_shard):
            self.photo("Ferien Sommer 2023", (2023, 2023), None if i % 4 == 3 else "mallorca")
        for i in range(per_shard):
            self.photo("東京 夜景", (2020, 2024), "tokyo" if i % 2 else "new_york")

    def other_formats(self) -> None:
        """PNG with alpha, lossy WebP and LZW TIFF (half size keeps the tree small), and a text file."""
        small = (self.size[0] // 2, self.size[1] // 2)
        rgba = make_photo(*small, self.seed + 7).convert("RGBA")
        yy, xx = np.mgrid[0 : small[1], 0 : small[0]]
        dist = np.hypot((xx - small[0] / 2) / small[0], (yy - small[1] / 2) / small[1])
        alpha = np.clip((0.5 - dist) * 4 * 255, 0, 255).astype(np.uint8)  # opaque centre, clear corners
        rgba.putalpha(Image.fromarray(alpha, "L"))
        self.write("Ferien Sommer 2023/strand.png", _encode(rgba, "PNG"), self.ok)
        self.write("Ferien Sommer 2023/notes.txt", "Packliste: Sonnencreme, Kamera, Ladegerät\n".encode(), self.rejected)
        self.write("東京 夜景/neon.webp", _encode(make_photo(*small, self.seed + 8), "WEBP", quality=80), self.ok)
        tiff = _encode(make_photo(*small, self.seed + 9), "TIFF", compression="tiff_lzw")
        self.write("misc_scans/scan.tiff", tiff, self.ok)

    def broken(self) -> None:
        """Files that must fail ``Image.open(...).load()``."""
        valid_jpeg = _encode_jpeg(make_photo(640, 480, self.seed + 10))
        self.write("misc_scans/truncated.jpg", valid_jpeg[: len(valid_jpeg) // 2], self.failed)
        self.write("misc_scans/empty.jpg", b"", self.failed)
        self.write("misc_scans/not-a-photo.jpg", b"This is not a JPEG, just text with the wrong name.\n", self.failed)
        png = bytearray(_encode(make_photo(64, 48, self.seed + 11), "PNG"))
        png[16:24] = b"\xff" * 8  # clobber IHDR width/height: IHDR CRC no longer matches
        self.write("misc_scans/corrupt-header.png", bytes(png), self.failed)


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write_sample_tree(
    dest: Path,
    *,
    photos_per_shard: int = 8,
    photo_size: tuple[int, int] = (1600, 1200),
    seed: int = 0,
) -> SampleTree:
    """Write a deterministic demo tree under ``dest`` (created if missing; existing files with
    the same names are overwritten, others left alone) and return what ingestion should find.

    Layout (default ``photos_per_shard=8``)::

        cover.jpg                          top-level shard "" (1 photo)
        street-2019/, street-2019/day2/    photos, a third of them in the nested day2/
        Ferien Sommer 2023/                photos + strand.png (RGBA) + notes.txt (rejected)
        東京 夜景/                          photos + neon.webp (lossy)
        misc_scans/                        scan.tiff + 4 broken files (failed)

    Photo names mimic cameras (IMG_0102.JPG, DSC_0103.JPG, DSCF0104.JPG, IMG_0105.jpeg, ...),
    so extensions come in mixed case.

    Photos are landscape JPEGs (``photo_size`` is the upright size; portrait input is swapped)
    with EXIF camera data, dates 2019-2024, GPS (some in the southern/western hemisphere) and
    orientations cycling 1..8 -- see the module docstring for the orientation/marker contract.
    All 8 orientations appear once there are at least 8 photos (``photos_per_shard >= 3``).
    """
    if photos_per_shard < 1:
        raise ValueError("photos_per_shard must be >= 1")
    w, h = max(photo_size), min(photo_size)
    if w == h:
        w += 1  # keep "landscape" strictly true
    tree = _TreeWriter(Path(dest), seed, (w, h))
    tree.photos(photos_per_shard)
    tree.other_formats()
    tree.broken()
    return SampleTree(
        root=tree.root,
        files=len(tree.ok) + len(tree.failed) + len(tree.rejected),
        expected_ok=len(tree.ok),
        expected_failed=len(tree.failed),
        expected_rejected=len(tree.rejected),
        shards=[
            "street-2019",
            "Ferien Sommer 2023",
            unicodedata.normalize("NFC", "東京 夜景"),
            "misc_scans",
        ],
        has_top_level=True,
        ok=tree.ok,
        failed=tree.failed,
        rejected=tree.rejected,
    )

"""Robust EXIF extraction: turn whatever Pillow can read into a small, JSON-safe summary.

Broken EXIF is common in the wild, so nothing here raises: every step degrades to
"what could be read" plus a short ``error`` note.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from numbers import Real
from typing import Any

from PIL import ExifTags, Image

from assemblage_assets.images.xmp import xmp_dates

__all__ = ["ExifSummary", "extract_exif"]

B = ExifTags.Base
G = ExifTags.GPS

_MAX_STR = 512  # a Make/Model longer than this is a blob, not a name
_DT_RE = re.compile(
    r"(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})(Z|[+-]\d{2}:?\d{2})?"
)
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})")


@dataclass(frozen=True)
class ExifSummary:
    data: dict[str, Any]  # JSON-serialisable (no NUL, NaN or inf): stored as JSONB
    orientation: int | None  # 1..8 when valid, else None
    captured_at: datetime | None  # tz-aware when an OffsetTime* tag is present
    error: str | None  # short reason when EXIF was present but (partly) unreadable
    captured_at_source: str | None = None  # the tag captured_at came from (see _capture_time)


def _text(v: Any) -> str | None:
    """Clean string tag; None for non-text or empty values."""
    if isinstance(v, bytes):
        s = v.decode("utf-8", errors="replace")
    elif isinstance(v, str):
        # Pillow decodes ASCII tags as latin-1, but writers often put UTF-8 there.
        try:
            s = v.encode("latin-1").decode("utf-8")
        except UnicodeError:
            s = v
    else:
        return None
    # An EXIF ASCII value ends at its first NUL (exiftool reads "ION230\0F" as ION230); whatever
    # follows is garbage, and no NUL is left for Postgres JSONB, which rejects \u0000.
    s = s.partition("\x00")[0].strip()
    return s[:_MAX_STR] or None


def _num(v: Any) -> float | None:
    """Finite float from int/float/IFDRational; None for zero denominators and garbage."""
    if isinstance(v, tuple) and len(v) == 1:  # some writers store a count-1 array
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, Real):
        return None
    if getattr(v, "denominator", 1) == 0:  # IFDRational x/0 -> would be NaN
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    if isinstance(v, tuple) and v:  # e.g. ISOSpeedRatings=(100, 100), width=(100, 0)
        v = v[0]
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _in_range(f: float | None, lo: float, hi: float) -> float | None:
    # Rejects sentinels such as 0xFFFFFFFF that some writers use for "unknown".
    return f if f is not None and lo < f <= hi else None


def _float_in(lo: float, hi: float) -> Callable[[Any], float | None]:
    return lambda v: _in_range(_num(v), lo, hi)


def _int_in(lo: int, hi: int) -> Callable[[Any], int | None]:
    return lambda v: i if (i := _int(v)) is not None and lo <= i <= hi else None


def _offset(v: Any) -> timezone | None:
    s = _text(v)
    m = _OFFSET_RE.fullmatch(s) if s else None
    if not m:
        return None
    delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
    if delta >= timedelta(hours=24):
        return None
    return timezone(-delta if m[1] == "-" else delta)


def _datetime(v: Any, offset: Any = None) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (ISO-ish variants too); None unless it is a real date."""
    s = _text(v)
    m = _DT_RE.match(s) if s else None
    if not m:
        return None
    try:  # rejects 0000:00:00 and 1999:99:99
        dt = datetime(*(int(x) for x in m.groups()[:6]))
    except ValueError:
        return None
    tz = UTC if m[7] == "Z" else _offset(m[7] or offset)
    return dt.replace(tzinfo=tz) if tz else dt


def _exposure_text(t: float) -> str:
    # Photographers read 1/160, not 0.00625; long or odd exposures stay decimal.
    if t < 1:
        inv = 1 / t
        if abs(inv - round(inv)) < 0.05 * inv:
            return f"1/{round(inv)}"
    return f"{t:g}"


def _gps(gps: Mapping[int, Any]) -> dict[str, float] | None:
    def coord(val_tag: int, ref_tag: int, neg_ref: str, limit: float) -> float | None:
        val = gps.get(val_tag)
        if not isinstance(val, tuple) or len(val) != 3:
            return None
        parts = [_num(p) for p in val]
        if any(p is None or p < 0 for p in parts):
            return None
        d, m, s = parts  # type: ignore[misc]
        deg = d + m / 60 + s / 3600
        if deg > limit:
            return None
        ref = (_text(gps.get(ref_tag)) or "").upper()
        return -deg if ref.startswith(neg_ref) else deg

    lat = coord(G.GPSLatitude, G.GPSLatitudeRef, "S", 90)
    lon = coord(G.GPSLongitude, G.GPSLongitudeRef, "W", 180)
    if lat is None or lon is None:
        return None
    out = {"lat": round(lat, 7), "lon": round(lon, 7)}  # ~1 cm; drops float noise
    alt = _in_range(_num(gps.get(G.GPSAltitude)), -1, 100_000)  # -1: allow 0 m
    if alt is not None:
        ref = gps.get(G.GPSAltitudeRef)
        below = ref in (1, b"\x01") or (isinstance(ref, tuple) and ref[:1] == (1,))
        out["alt_m"] = -alt if below else alt
    return out


def _read_ifds(img: Image.Image, errors: list[str]) -> tuple[Mapping[int, Any], Mapping[int, Any], Mapping[int, Any]]:
    """IFD0, the Exif IFD and the GPS IFD, each empty when unreadable (the reason goes to ``errors``)."""
    ifd0: Mapping[int, Any] = {}
    exif_ifd: Mapping[int, Any] = {}
    gps_ifd: Mapping[int, Any] = {}
    # Pillow warns (instead of raising) on corrupt EXIF; record it rather than spam logs.
    # Note: catch_warnings is process-global, so this is not thread-safe for warning output.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            exif = img.getexif()
            ifd0 = dict(exif)
        except Exception as e:  # OSError/ValueError/TypeError/SyntaxError/struct.error...
            errors.append(f"getexif: {type(e).__name__}: {e}")
            exif = None
        if exif is not None:
            for name, ifd in (("exif", ExifTags.IFD.Exif), ("gps", ExifTags.IFD.GPSInfo)):
                try:
                    sub = dict(exif.get_ifd(ifd))
                except Exception as e:
                    errors.append(f"{name} ifd: {type(e).__name__}: {e}")
                    continue
                if name == "exif":
                    exif_ifd = sub
                else:
                    gps_ifd = sub
    for w in caught:
        if issubclass(w.category, UserWarning):
            errors.append(" ".join(str(w.message).split()).rstrip("."))
    return ifd0, exif_ifd, gps_ifd


def extract_exif(img: Image.Image) -> ExifSummary:
    """Summarise ``img``'s EXIF. Never raises; see :class:`ExifSummary`."""
    errors: list[str] = []
    data: dict[str, Any] = {}
    ifd0, exif_ifd, gps_ifd = _read_ifds(img, errors)

    fields: list[tuple[str, Mapping[int, Any], int, Callable[[Any], Any]]] = [
        ("make", ifd0, B.Make, _text),
        ("model", ifd0, B.Model, _text),
        ("lens_model", exif_ifd, B.LensModel, _text),
        ("software", ifd0, B.Software, _text),
        ("iso", exif_ifd, B.ISOSpeedRatings, _int_in(1, 10**7)),
        ("f_number", exif_ifd, B.FNumber, _float_in(0, 1000)),
        ("exposure_time", exif_ifd, B.ExposureTime, _float_in(0, 86_400)),  # <= 1 day
        ("focal_length_mm", exif_ifd, B.FocalLength, _float_in(0, 100_000)),
        ("focal_length_35mm", exif_ifd, B.FocalLengthIn35mmFilm, _int_in(1, 100_000)),
        ("orientation", ifd0, B.Orientation, _int_in(1, 8)),
        ("width_exif", exif_ifd, B.ExifImageWidth, _int_in(1, 10**6)),
        ("height_exif", exif_ifd, B.ExifImageHeight, _int_in(1, 10**6)),
    ]
    for key, src, tag, conv in fields:
        try:
            value = conv(src.get(tag))
        except Exception as e:  # a tag holding something nobody anticipated
            errors.append(f"{key}: {type(e).__name__}")
            continue
        if value is not None:
            data[key] = value
    # pillow-heif turns HEIF pixels upright on decode and resets the tag to 1: report the file's.
    original = img.info.get("original_orientation")
    if isinstance(original, int) and not isinstance(original, bool) and 1 <= original <= 8:
        data["orientation"] = original
    if "exposure_time" in data:
        data["exposure_time_text"] = _exposure_text(data["exposure_time"])

    captured_at, captured_at_source = _capture_time(img, data, ifd0, exif_ifd, errors)

    try:
        gps = _gps(gps_ifd)
    except Exception as e:
        errors.append(f"gps: {type(e).__name__}")
        gps = None
    if gps:
        data["gps"] = gps

    # Dedupe and keep it short; error text may end up in a Postgres text column too.
    error = "; ".join(dict.fromkeys(errors)).replace("\x00", "")[:300] or None
    return ExifSummary(data, data.get("orientation"), captured_at, error, captured_at_source)


def _capture_time(
    img: Image.Image, data: dict[str, Any], ifd0: Mapping[int, Any], exif_ifd: Mapping[int, Any], errors: list[str]
) -> tuple[datetime | None, str | None]:
    """The capture time and the tag it came from: EXIF DateTimeOriginal (+ OffsetTimeOriginal),
    then DateTimeDigitized, then XMP photoshop:DateCreated / xmp:CreateDate, and only then IFD0
    DateTime, which editors rewrite on every save. Every valid date is kept in ``data``."""
    candidates: list[tuple[str, datetime]] = []
    for key, source, src, tag, off_tag in (
        ("datetime_original", "DateTimeOriginal", exif_ifd, B.DateTimeOriginal, B.OffsetTimeOriginal),
        ("datetime_digitized", "DateTimeDigitized", exif_ifd, B.DateTimeDigitized, B.OffsetTimeDigitized),
    ):
        try:
            dt = _datetime(src.get(tag), exif_ifd.get(off_tag))
        except Exception as e:
            errors.append(f"{key}: {type(e).__name__}")
            continue
        if dt is not None:
            data[key] = dt.isoformat()
            candidates.append((source, dt))
    try:
        xmp = xmp_dates(img)
    except Exception as e:  # noqa: BLE001 - a packet nobody anticipated must not cost the EXIF
        errors.append(f"xmp: {type(e).__name__}")
        xmp = []
    for source, dt in xmp:
        data[f"xmp_{source.split(':')[1].lower()}"] = dt.isoformat()
        candidates.append((source, dt))
    try:
        dt = _datetime(ifd0.get(B.DateTime), exif_ifd.get(B.OffsetTime))
    except Exception as e:
        errors.append(f"datetime: {type(e).__name__}")
        dt = None
    if dt is not None:
        data["datetime"] = dt.isoformat()
        candidates.append(("DateTime", dt))
    if not candidates:
        return None, None
    source, dt = candidates[0]
    return dt, source

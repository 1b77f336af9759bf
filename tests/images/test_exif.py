"""Tests for assemblage_assets.images.exif against the shared real-file corpus and generated JPEGs."""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from assemblage_assets.images.exif import ExifSummary, extract_exif

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
MANIFEST = CORPUS / "MANIFEST.tsv"

B, G, IFD = ExifTags.Base, ExifTags.GPS, ExifTags.IFD

# Model strings may contain '<', '>' and ',' (Samsung), but never a quote.
MAKE_MODEL_RE = re.compile(r"EXIF Make='([^']*)' Model='([^']*)'")
GPS_RE = re.compile(r"GPS lat,lon=(-?[\d.]+),(-?[\d.]+)")


def _rows() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(newline="", encoding="utf-8") as f:
        # QUOTE_NONE: notes contain quotes that are part of the text.
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


ROWS = _rows()


def _open(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open-time warnings are not what we test here
        return Image.open(path)


def _extract(img: Image.Image) -> ExifSummary:
    # Pillow's UserWarnings must not escape extract_exif.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return extract_exif(img)


def _assert_json_safe(summary: ExifSummary) -> None:
    text = json.dumps(summary.data, allow_nan=False)
    assert "\\u0000" not in text and "\x00" not in text


@pytest.mark.parametrize(
    "row",
    ROWS or [pytest.param(None, id="no-corpus")],
    ids=lambda r: r["file"] if r else "no-corpus",
)
def test_corpus_file(row: dict[str, str] | None) -> None:
    if row is None:
        pytest.skip("../shared/corpus not present (shared test corpus lives beside the project)")
    path = CORPUS / row["file"]
    expected, notes = row["expected"], row["notes"]
    try:
        img = _open(path)
    except Exception as e:
        if expected.startswith("reject"):
            pytest.skip(f"Image.open fails as the manifest expects: {type(e).__name__}")
        raise

    with img:
        summary = _extract(img)
    _assert_json_safe(summary)
    data = summary.data
    assert summary.orientation == data.get("orientation")

    if m := MAKE_MODEL_RE.search(notes):
        assert (data.get("make"), data.get("model")) == (m[1], m[2])
    elif expected == "ok-with-exif":
        pytest.fail(f"manifest row has no parsable EXIF Make/Model note: {notes!r}")

    if expected == "ok-gps":
        m = GPS_RE.search(notes)
        assert m, notes
        assert "gps" in data, data
        assert data["gps"]["lat"] == pytest.approx(float(m[1]), abs=1e-4)
        assert data["gps"]["lon"] == pytest.approx(float(m[2]), abs=1e-4)
    elif "GPS lat,lon" not in notes:
        # No coordinates in the manifest: we must not invent any (e.g. garbage GPS IFDs).
        assert "gps" not in data, data

    if expected.startswith("orientation-"):
        assert summary.orientation == int(expected.removeprefix("orientation-"))
    # exif_orientation is what Pillow itself reads; out-of-range values (0) become None.
    if row["exif_orientation"].isdigit():
        o = int(row["exif_orientation"])
        assert summary.orientation == (o if 1 <= o <= 8 else None)


def _corpus_file(name: str) -> Path:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip("../shared/corpus not present (shared test corpus lives beside the project)")
    return path


def test_garbage_gps_and_sentinels_dropped() -> None:
    with _open(_corpus_file("pillow_exif_gps.jpg")) as img:
        s = _extract(img)
    assert "gps" not in s.data
    # ExposureTime / XResolution hold 0xFFFFFFFF sentinels in this file.
    assert "exposure_time" not in s.data
    assert s.data["make"] == "Make"


def test_corrupt_exif_warning_becomes_error_note() -> None:
    with _open(_corpus_file("pillow_hopper_bad_exif.jpg")) as img:
        s = _extract(img)
    assert s.error and "Corrupt EXIF" in s.error
    assert s.orientation == 1  # what could be read is still returned


def test_getexif_failure_is_reported_not_raised() -> None:
    with _open(_corpus_file("pillow_broken_data_stream.png")) as img:
        s = _extract(img)
    assert s.data == {} and s.error and "OSError" in s.error


def test_nul_padded_strings_and_iso_datetime() -> None:
    with _open(_corpus_file("pillow_invalid-exif-without-x-resolution.jpg")) as img:
        s = _extract(img)
    _assert_json_safe(s)
    assert s.data["datetime_original"] == "2016-12-03T11:17:43"  # NUL-terminated in file
    assert s.data["datetime"] == "2019-10-17T16:55:20-07:00"  # ISO 8601 instead of EXIF form
    assert s.captured_at == datetime(2016, 12, 3, 11, 17, 43)


def test_offset_time_original_makes_captured_at_aware() -> None:
    with _open(_corpus_file("exif-samples_mobile_HMD_Nokia_8.3_5G.jpg")) as img:
        s = _extract(img)
    assert s.captured_at == datetime(2022, 8, 14, 14, 12, 31, tzinfo=timezone(timedelta(hours=3)))
    assert s.data["exposure_time_text"] == "1/1848"


def test_canon_40d_values() -> None:
    with _open(_corpus_file("exif-samples_Canon_40D.jpg")) as img:
        s = _extract(img)
    d = s.data
    assert d["iso"] == 100 and d["f_number"] == pytest.approx(7.1)
    assert d["exposure_time"] == pytest.approx(1 / 160) and d["exposure_time_text"] == "1/160"
    assert d["focal_length_mm"] == pytest.approx(135.0)
    assert d["datetime_original"] == "2008-05-30T15:56:01"
    assert s.captured_at == datetime(2008, 5, 30, 15, 56, 1)
    assert s.error is None


# --- generated files -------------------------------------------------------------------------


def _jpeg_with(exif: Image.Exif) -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=exif)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_generated_jpeg_full_values_southwest() -> None:
    exif = Image.Exif()
    exif[B.Make] = "Canon"
    exif[B.Model] = "Canon EOS 5D"
    exif[B.Orientation] = 6
    sub = exif.get_ifd(IFD.Exif)
    sub[B.DateTimeOriginal] = "2021:06:01 12:34:56"
    sub[B.OffsetTimeOriginal] = "-03:00"
    sub[B.FNumber] = IFDRational(71, 10)
    sub[B.ISOSpeedRatings] = 400
    sub[B.ExposureTime] = IFDRational(1, 250)
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[G.GPSLatitudeRef] = "S"
    gps[G.GPSLatitude] = (IFDRational(33), IFDRational(51), IFDRational(3540, 100))
    gps[G.GPSLongitudeRef] = "W"
    gps[G.GPSLongitude] = (IFDRational(70), IFDRational(39), IFDRational(0))
    gps[G.GPSAltitudeRef] = b"\x01"  # below sea level
    gps[G.GPSAltitude] = IFDRational(125, 10)

    with _jpeg_with(exif) as img:
        s = _extract(img)
    _assert_json_safe(s)
    d = s.data
    assert (d["make"], d["model"]) == ("Canon", "Canon EOS 5D")
    assert d["iso"] == 400 and d["f_number"] == pytest.approx(7.1)
    assert d["exposure_time"] == pytest.approx(0.004) and d["exposure_time_text"] == "1/250"
    assert s.orientation == 6 == d["orientation"]
    assert d["datetime_original"] == "2021-06-01T12:34:56-03:00"
    assert s.captured_at == datetime(2021, 6, 1, 12, 34, 56, tzinfo=timezone(timedelta(hours=-3)))
    assert d["gps"]["lat"] == pytest.approx(-(33 + 51 / 60 + 35.4 / 3600), abs=1e-6)
    assert d["gps"]["lon"] == pytest.approx(-(70 + 39 / 60), abs=1e-6)
    assert d["gps"]["alt_m"] == pytest.approx(-12.5)
    assert s.error is None


def test_generated_jpeg_nul_in_strings() -> None:
    exif = Image.Exif()
    exif[B.Make] = "Canon\x00\x00"
    exif[B.Model] = b"EOS\x00 R5  "
    exif[B.Software] = b"Caf\xc3\xa9"  # UTF-8 in an ASCII tag, common in the wild
    with _jpeg_with(exif) as img:
        s = _extract(img)
    _assert_json_safe(s)
    assert s.data["make"] == "Canon"
    assert s.data["model"] == "EOS"  # an ASCII value ends at its first NUL (was "EOS R5" when NULs were removed)
    assert s.data["software"] == "Café"


def test_ascii_value_ends_at_its_first_nul() -> None:
    """WWL_(Polaroid)_ION230.jpg stores Model ``ION230\\0F``: exiftool reads ION230, and so must we."""
    exif = Image.Exif()
    exif[B.Make] = "Polaroid"
    exif[B.Model] = "ION230\x00F"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=exif)
    assert b"ION230\x00F\x00" in buf.getvalue()  # written as given, plus the ASCII terminator
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.getexif()[B.Model] == "ION230\x00F"  # Pillow hands the embedded NUL through
        s = _extract(img)
    _assert_json_safe(s)
    assert (s.data["make"], s.data["model"]) == ("Polaroid", "ION230")


def test_generated_jpeg_invalid_dates_and_zero_denominators_dropped() -> None:
    exif = Image.Exif()
    exif[B.DateTime] = "0000:00:00 00:00:00"
    exif[B.Orientation] = 9
    sub = exif.get_ifd(IFD.Exif)
    sub[B.DateTimeOriginal] = "1999:99:99 99:99:99"
    sub[B.FNumber] = IFDRational(71, 0)
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[G.GPSLatitudeRef] = "N"
    gps[G.GPSLatitude] = (IFDRational(33), IFDRational(51, 0), IFDRational(0))
    gps[G.GPSLongitudeRef] = "E"
    gps[G.GPSLongitude] = (IFDRational(70), IFDRational(39), IFDRational(0))
    with _jpeg_with(exif) as img:
        s = _extract(img)
    _assert_json_safe(s)
    assert s.data == {}
    assert s.orientation is None and s.captured_at is None


def test_image_without_exif() -> None:
    s = _extract(Image.new("RGB", (4, 4)))
    assert s == ExifSummary({}, None, None, None)

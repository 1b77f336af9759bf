"""captured_at precedence: EXIF DateTimeOriginal (+ OffsetTimeOriginal), then XMP
photoshop:DateCreated / xmp:CreateDate, then IFD0 DateTime; the tag used is recorded."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from assemblage_assets.core import db
from assemblage_assets.images.exif import extract_exif
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from assemblage_assets.images.xmp import parse_xmp_date, xmp_values

B = ExifTags.Base


def xmp_packet(body: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f"{body}</rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


# Lightroom writes properties as attributes, other tools as elements: both are read.
AS_ATTRIBUTES = xmp_packet(
    '<rdf:Description rdf:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
    'xmlns:xmp="http://ns.adobe.com/xap/1.0/" photoshop:DateCreated="2019-07-14T18:05:09+02:00" '
    'xmp:CreateDate="2019-07-15T08:00:00"/>'
)
AS_ELEMENTS = xmp_packet(
    '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
    "<xmp:CreateDate>2011-03-02T10:20</xmp:CreateDate></rdf:Description>"
)


def jpeg(exif: Image.Exif | None = None, xmp: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    params: dict[str, object] = {}
    if exif is not None:
        params["exif"] = exif.tobytes()
    if xmp is not None:
        params["xmp"] = xmp
    Image.new("RGB", (64, 48), (90, 140, 60)).save(buf, "JPEG", **params)
    return buf.getvalue()


def exif_with(*, original: str | None = None, offset: str | None = None, ifd0: str | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[B.Make] = "Fujifilm"
    if ifd0:
        exif[B.DateTime] = ifd0
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    if original:
        sub[B.DateTimeOriginal] = original
    if offset:
        sub[B.OffsetTimeOriginal] = offset
    return exif


def summary(data: bytes):
    with Image.open(io.BytesIO(data)) as img:
        return extract_exif(img)


def test_date_time_original_wins_over_date_time() -> None:
    s = summary(jpeg(exif_with(original="2020:01:02 03:04:05", offset="+09:00", ifd0="2024:06:30 22:00:00")))
    assert s.captured_at == datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=9)))
    assert s.captured_at_source == "DateTimeOriginal"
    assert s.data["datetime"] == "2024-06-30T22:00:00"  # kept, not used


def test_xmp_date_used_when_exif_has_none() -> None:
    s = summary(jpeg(xmp=AS_ATTRIBUTES))
    assert s.captured_at == datetime(2019, 7, 14, 18, 5, 9, tzinfo=timezone(timedelta(hours=2)))
    assert s.captured_at_source == "photoshop:DateCreated"
    assert s.data["xmp_datecreated"] == "2019-07-14T18:05:09+02:00"
    assert s.data["xmp_createdate"] == "2019-07-15T08:00:00"

    s = summary(jpeg(xmp=AS_ELEMENTS))
    assert (s.captured_at, s.captured_at_source) == (datetime(2011, 3, 2, 10, 20), "xmp:CreateDate")


def test_xmp_beats_the_edit_time_but_not_the_exif_capture_time() -> None:
    edited = exif_with(ifd0="2024:06:30 22:00:00")
    assert summary(jpeg(edited, AS_ELEMENTS)).captured_at_source == "xmp:CreateDate"
    shot = exif_with(original="2010:10:10 10:10:10", ifd0="2024:06:30 22:00:00")
    assert summary(jpeg(shot, AS_ATTRIBUTES)).captured_at_source == "DateTimeOriginal"
    only_edit = summary(jpeg(edited))
    assert (only_edit.captured_at, only_edit.captured_at_source) == (datetime(2024, 6, 30, 22), "DateTime")
    assert summary(jpeg()).captured_at_source is None


@pytest.mark.parametrize(
    "packet",
    [
        # billion laughs: refused unread (a DTD is never parsed)
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&c;</x:xmpmeta>',
        # external entity
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b"<x:xmpmeta unclosed",
        b"\xff\xfe garbage",
    ],
)
def test_hostile_or_broken_packets_read_as_nothing(packet: bytes) -> None:
    assert xmp_values(packet) == {}
    s = summary(jpeg(exif_with(ifd0="2001:02:03 04:05:06"), packet))
    assert s.captured_at_source == "DateTime"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-07-14T18:05:09.25Z", datetime(2019, 7, 14, 18, 5, 9, tzinfo=UTC)),
        ("2019-07-14T18:05-05:00", datetime(2019, 7, 14, 18, 5, tzinfo=timezone(timedelta(hours=-5)))),
        ("2019-07-14", datetime(2019, 7, 14)),
        ("2019-07", None),  # a month is not a capture time
        ("2019-13-01T00:00:00", None),
        ("yesterday", None),
    ],
)
def test_parse_xmp_date(text: str, expected: datetime | None) -> None:
    assert parse_xmp_date(text) == expected


def test_source_recorded_through_ingestion(pg_dsn: str, tmp_path: Path) -> None:
    shard = tmp_path / "images" / "scans"
    shard.mkdir(parents=True)
    (shard / "xmp-only.jpg").write_bytes(jpeg(xmp=AS_ATTRIBUTES))
    (shard / "camera.jpg").write_bytes(jpeg(exif_with(original="2020:01:02 03:04:05", ifd0="2024:06:30 22:00:00")))
    (shard / "edited.jpg").write_bytes(jpeg(exif_with(ifd0="2024:06:30 22:00:00")))
    with db.connect(pg_dsn) as conn:
        for found in discover_shards(tmp_path / "images"):
            scan_shard(conn, found, max_pixels=120_000_000)
        got = {
            Path(r["local_path"]).name: (r["captured_at"], r["captured_at_source"], r["original_key"].split("/")[1:3])
            for r in conn.execute(
                "SELECT p.local_path, i.captured_at, i.captured_at_source, i.original_key "
                "FROM processing_log p JOIN images i ON i.id = p.image_id"
            )
        }
    assert got == {
        # camera local time as shot (the column has no zone)
        "xmp-only.jpg": (datetime(2019, 7, 14, 18, 5, 9), "photoshop:DateCreated", ["2019", "07"]),
        "camera.jpg": (datetime(2020, 1, 2, 3, 4, 5), "DateTimeOriginal", ["2020", "01"]),
        "edited.jpg": (datetime(2024, 6, 30, 22), "DateTime", ["2024", "06"]),
    }

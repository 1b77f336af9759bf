"""HEIC/HEIF and AVIF sources, written by the same plugins that read them (pillow-heif, Pillow's
AVIF), ingested end to end: detected by magic bytes, EXIF read, derivatives upright."""

from __future__ import annotations

import base64
import io
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from support.oriented import assert_upright, upright

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec, register_heif, sniff_format
from assemblage_assets.core.settings import DEFAULT_IMAGE_EXTENSIONS
from assemblage_assets.core.thumbhash import thumbhash_aspect_ratio
from assemblage_assets.dev.sample_data import STORE_TRANSPOSE, photo_exif
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.probe import probe_file
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards

TAKEN = datetime(2024, 5, 17, 9, 41, 7)


def write_camera_style(path: Path, fmt: str, orientation: int) -> Path:
    """A file as a phone writes it: the pixels stored turned, the EXIF tag saying how to turn them
    back (each plugin turns the tag into HEIF's irot/imir boxes as it encodes)."""
    register_heif()
    img = upright("RGB")
    if (turn := STORE_TRANSPOSE[orientation]) is not None:
        img = img.transpose(turn)
    exif = photo_exif(make="Apple", model="iPhone 15 Pro", taken=TAKEN, orientation=orientation)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, exif=exif.tobytes(), quality=90)
    return path


def rows(dsn: str, sql: str, *params: object) -> list[dict]:
    with db.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def test_sniff_recognises_heif_and_avif_brands() -> None:
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body

    assert sniff_format(ftyp(b"heic", b"mif1", b"heic")) == "HEIF"
    assert sniff_format(ftyp(b"heix", b"mif1")) == "HEIF"
    assert sniff_format(ftyp(b"mif1", b"heic")) == "HEIF"
    assert sniff_format(ftyp(b"avif", b"avif", b"mif1")) == "AVIF"
    assert sniff_format(ftyp(b"mif1", b"avif", b"miaf")) == "AVIF"  # generic major brand, AVIF compatible
    assert sniff_format(ftyp(b"isom", b"iso2", b"mp41")) == "MP4"  # a video named .heic is not an image
    assert sniff_format(ftyp(b"crx ", b"isom")) == "CR3"
    assert {".heic", ".heif", ".avif"} <= set(DEFAULT_IMAGE_EXTENSIONS)


@pytest.mark.parametrize(("fmt", "name", "ext"), [("HEIF", "IMG_0001.HEIC", "heic"), ("AVIF", "photo.avif", "avif")])
def test_heic_and_avif_ingest_upright_with_exif(pg_dsn: str, tmp_path: Path, fmt: str, name: str, ext: str) -> None:
    images = tmp_path / "images"
    write_camera_style(images / "phone" / name, fmt, orientation=6)
    cache = tmp_path / "cache"
    with db.connect(pg_dsn) as conn:
        for shard in discover_shards(images):
            scan_shard(conn, shard, max_pixels=120_000_000)
            derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)

    (log,) = rows(pg_dsn, "SELECT status, error_kind, error_message FROM processing_log")
    assert (log["status"], log["error_kind"]) == ("processed", None), log["error_message"]
    (img,) = rows(pg_dsn, "SELECT * FROM images")
    assert img["format"] == fmt and img["original_ext"] == ext
    assert img["original_key"] == f"original/2024/05/{img['id']}.{ext}"  # month of the EXIF capture date
    exif = img["exif_data"]
    assert (exif["make"], exif["model"], exif["orientation"]) == ("Apple", "iPhone 15 Pro", 6)
    assert img["captured_at"] == TAKEN and img["captured_at_source"] == "DateTimeOriginal"
    # Stored as a portrait of 240x480 turned; both derivatives come out as the upright landscape.
    for key in (img["thumbnail_key"], img["preview_key"]):
        with Image.open(cache / key) as derived:
            derived.load()
            assert_upright(derived, "raw-rgb", f"{fmt} {key}")
    assert (img["preview_width"], img["preview_height"]) == (480, 240)
    assert thumbhash_aspect_ratio(base64.b64decode(img["thumbhash"])) > 1.5  # placeholder of the upright image


def test_heic_named_jpg_is_probed_by_content(tmp_path: Path) -> None:
    """The extension only admits a file; the format (and the published extension) come from its bytes."""
    path = write_camera_style(tmp_path / "renamed.jpg", "HEIF", orientation=1)
    result = probe_file(str(path), path.stat().st_size, 120_000_000)
    assert (result.status, result.format, result.ext) == ("pending", "HEIF", "heic")


def test_image_extensions_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_camera_style(tmp_path / "IMG_0002.heic", "HEIF", orientation=1)
    size = path.stat().st_size
    assert probe_file(str(path), size, 120_000_000).status == "pending"  # default list
    monkeypatch.setenv("IMAGE_EXTENSIONS", "jpg, .JPEG png")
    rejected = probe_file(str(path), size, 120_000_000)
    assert (rejected.status, rejected.error_kind) == ("rejected", "extension")
    assert "'.heic' is not one of .jpg .jpeg .png" in (rejected.error_message or "")


def test_video_named_heic_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "clip.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64)
    result = probe_file(str(path), path.stat().st_size, 120_000_000)
    assert (result.status, result.error_kind) == ("failed", "unsupported-format")


def test_truncated_heic_is_recorded_corrupt(pg_dsn: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    good = write_camera_style(images / "phone" / "whole.heic", "HEIF", orientation=1)
    data = good.read_bytes()
    (images / "phone" / "cut.heic").write_bytes(data[: len(data) // 2])
    with db.connect(pg_dsn) as conn:
        for shard in discover_shards(images):
            scan_shard(conn, shard, max_pixels=120_000_000)
            derive_shard(conn, shard.key, cache_dir=tmp_path / "cache", spec=DerivativeSpec(), workers=1)
    statuses = {Path(r["local_path"]).name: (r["status"], r["error_kind"])
                for r in rows(pg_dsn, "SELECT local_path, status, error_kind FROM processing_log")}
    assert statuses["whole.heic"] == ("processed", None)
    assert statuses["cut.heic"] == ("failed", "corrupt")


def test_avif_round_trip_through_pillow_keeps_orientation_tag() -> None:
    """What the ingestion test relies on: Pillow's AVIF reader reports the orientation (from
    irot/imir) as EXIF 274 with the pixels as stored, while pillow-heif hands over upright pixels."""
    buf = io.BytesIO()
    write_camera_style_to = upright("RGB").transpose(STORE_TRANSPOSE[6])  # type: ignore[arg-type]
    write_camera_style_to.save(buf, "AVIF", exif=photo_exif(make="x", model="y", taken=TAKEN, orientation=6).tobytes())
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.getexif().get(274) == 6 and img.size == (240, 480)


def test_avif_without_libavif_is_unsupported_not_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import features

    path = write_camera_style(tmp_path / "photo.avif", "AVIF", orientation=1)
    real_check = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "avif" else real_check(name))
    result = probe_file(str(path), path.stat().st_size, 120_000_000)
    assert (result.status, result.error_kind) == ("failed", "unsupported-format")
    assert "no AVIF support" in (result.error_message or "")

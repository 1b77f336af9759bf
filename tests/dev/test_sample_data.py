"""Tests for the synthetic sample tree (assemblage_assets.dev.sample_data)."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.ExifTags import GPS, IFD, Base

from assemblage_assets.dev.sample_data import SampleTree, make_photo, photo_exif, write_sample_tree

SIZE = (480, 320)  # small photos keep the suite fast; layout is independent of size


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> SampleTree:
    return write_sample_tree(tmp_path_factory.mktemp("sample"), photo_size=SIZE, seed=3)


def _jpeg_photos(tree: SampleTree) -> list[Path]:
    return [tree.root / p for p in tree.ok if p.lower().endswith((".jpg", ".jpeg"))]


def _red_dominant(region: np.ndarray) -> bool:
    r, g, b = region.reshape(-1, 3).mean(axis=0)
    return r > 150 and r > 1.6 * g and r > 1.6 * b


def test_counts_and_layout(tree: SampleTree) -> None:
    files = [p for p in tree.root.rglob("*") if p.is_file()]
    assert tree.files == len(files) == 33
    assert (tree.expected_ok, tree.expected_failed, tree.expected_rejected) == (28, 4, 1)
    assert tree.expected_ok + tree.expected_failed + tree.expected_rejected == tree.files
    assert len(tree.ok) == tree.expected_ok and len(tree.failed) == tree.expected_failed
    assert tree.rejected == ["Ferien Sommer 2023/notes.txt"]
    assert set(tree.shards) == {p.name for p in tree.root.iterdir() if p.is_dir()}
    assert {"street-2019", "Ferien Sommer 2023", "東京 夜景"} <= set(tree.shards)
    assert tree.has_top_level and any(p.parent == tree.root for p in files)
    assert any(p.parent.name == "day2" for p in files)  # nested folder inside a shard


def test_ok_files_load(tree: SampleTree) -> None:
    formats = {}
    for rel in tree.ok:
        with Image.open(tree.root / rel) as img:
            img.load()
            formats[rel.rsplit(".", 1)[1].lower()] = (img.format, img.mode)
    assert formats["png"] == ("PNG", "RGBA")
    assert formats["webp"][0] == "WEBP"
    assert formats["tiff"] == ("TIFF", "RGB")
    assert formats["jpg"] == ("JPEG", "RGB")
    with Image.open(tree.root / "Ferien Sommer 2023/strand.png") as img:
        lo, hi = img.getchannel("A").getextrema()
        assert lo == 0 and hi == 255  # partly transparent


def test_orientations_and_upright_marker(tree: SampleTree) -> None:
    seen = set()
    for path in _jpeg_photos(tree):
        with Image.open(path) as img:
            seen.add(img.getexif()[Base.Orientation])
            upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        h, w, _ = upright.shape
        assert w > h, path
        bh, bw = h // 20, w // 20
        assert _red_dominant(upright[:bh, :bw]), path
        assert not _red_dominant(upright[-bh:, -bw:]), path
    assert seen == set(range(1, 9))


def test_exif_and_gps(tree: SampleTree) -> None:
    lats, lons, makes = [], [], set()
    for path in _jpeg_photos(tree):
        with Image.open(path) as img:
            exif = img.getexif()
        makes.add(exif[Base.Make])
        sub = exif.get_ifd(IFD.Exif)
        year = int(sub[Base.DateTimeOriginal][:4])
        assert 2019 <= year <= 2024
        assert {Base.ISOSpeedRatings, Base.FNumber, Base.ExposureTime, Base.FocalLength} <= set(sub)
        gps = exif.get_ifd(IFD.GPSInfo)
        if gps:
            d, m, s = (float(v) for v in gps[GPS.GPSLatitude])
            lats.append((d + m / 60 + s / 3600) * (-1 if gps[GPS.GPSLatitudeRef] == "S" else 1))
            d, m, s = (float(v) for v in gps[GPS.GPSLongitude])
            lons.append((d + m / 60 + s / 3600) * (-1 if gps[GPS.GPSLongitudeRef] == "W" else 1))
    assert len(makes) >= 3
    assert lats and min(lats) < 0 < max(lats)
    assert min(lons) < 0 < max(lons)


def test_photo_exif_roundtrip() -> None:
    exif = photo_exif(
        make="Canon",
        model="Canon EOS R6",
        taken=datetime(2022, 5, 6, 7, 8, 9),
        orientation=6,
        gps=(-34.6037, -58.3816),
        exposure=(1, 250),
    )
    buf = io.BytesIO()
    Image.new("RGB", (16, 8)).save(buf, "JPEG", exif=exif)
    with Image.open(buf) as img:
        back = img.getexif()
    assert back[Base.Orientation] == 6 and back[Base.Model] == "Canon EOS R6"
    assert back.get_ifd(IFD.Exif)[Base.DateTimeOriginal] == "2022:05:06 07:08:09"
    assert float(back.get_ifd(IFD.Exif)[Base.ExposureTime]) == pytest.approx(1 / 250)
    gps = back.get_ifd(IFD.GPSInfo)
    assert gps[GPS.GPSLatitudeRef] == "S" and gps[GPS.GPSLongitudeRef] == "W"
    d, m, s = (float(v) for v in gps[GPS.GPSLatitude])
    assert d + m / 60 + s / 3600 == pytest.approx(34.6037, abs=1e-5)


def test_broken_files_fail(tree: SampleTree) -> None:
    for rel in tree.failed:
        with pytest.raises((OSError, SyntaxError, ValueError)), Image.open(tree.root / rel) as img:
            img.load()


def test_deterministic_and_idempotent(tree: SampleTree, tmp_path: Path) -> None:
    again = write_sample_tree(tmp_path, photo_size=SIZE, seed=3)
    assert again.ok == tree.ok
    for path in _jpeg_photos(tree):
        rel = path.relative_to(tree.root)
        assert (tmp_path / rel).read_bytes() == path.read_bytes(), rel
    # Rewriting into a non-empty directory overwrites in place.
    third = write_sample_tree(tmp_path, photo_size=SIZE, seed=3)
    assert third.files == tree.files
    assert sum(1 for p in tmp_path.rglob("*") if p.is_file()) == tree.files
    other = write_sample_tree(tmp_path / "other", photo_size=SIZE, seed=4)
    assert (other.root / "cover.jpg").read_bytes() != (tree.root / "cover.jpg").read_bytes()


def test_make_photo_is_photo_like() -> None:
    img = make_photo(4000, 3000, 1)
    assert img.size == (4000, 3000) and img.mode == "RGB"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    assert buf.tell() > 1_000_000
    assert np.array_equal(np.asarray(make_photo(64, 48, 5)), np.asarray(make_photo(64, 48, 5)))

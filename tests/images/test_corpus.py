"""The shared corpus of real camera files and broken/odd images, through both stages.

MANIFEST.tsv says what each file should do; every file must end in that outcome (or the one
its ``also_acceptable`` column allows), and none may stop the shard.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import resolve_shard

OK_FAMILY = {"ok", "ok-with-exif", "ok-gps", "ok-odd-mode", "animated"}
# Approved since the shared manifest was written (issue 12): its HEIF and AVIF files, marked
# reject-format there, must now be ingested.
NOW_APPROVED = {".heic", ".heif", ".avif"}


def outcome(status: str, kind: str | None) -> str:
    if status == "processed":
        return "ok"
    if status == "rejected" or kind == "unsupported-format":
        return "reject-format"
    if kind == "bomb":
        return "reject-bomb"
    return "reject-corrupt"


def expected_outcomes(row: dict[str, str]) -> set[str]:
    if Path(row["file"]).suffix.lower() in NOW_APPROVED and row["expected"] == "reject-format":
        return {"ok"}
    wanted = {row["expected"], *row["also_acceptable"].split("|")} - {"-"}
    return {"ok" if w in OK_FAMILY or w.startswith("orientation-") else w for w in wanted}


@pytest.fixture
def corpus_ingested(corpus_dir: Path, pg_dsn: str, tmp_path: Path):
    with (corpus_dir / "MANIFEST.tsv").open(newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    shard_dir = tmp_path / "images" / "corpus"
    shard_dir.mkdir(parents=True)
    for row in manifest:  # link, never copy, the shared files
        os.symlink(corpus_dir / row["file"], shard_dir / row["file"])
    cache = tmp_path / "cache"
    with db.connect(pg_dsn) as conn:
        shard = resolve_shard(tmp_path / "images", "corpus")
        scan = scan_shard(conn, shard, max_pixels=120_000_000)
        derive_shard(conn, "corpus", cache_dir=cache, spec=DerivativeSpec(), workers=2)
        rows = conn.execute(
            """SELECT p.local_path, p.status, p.error_kind, p.error_message, i.*
               FROM processing_log p LEFT JOIN images i ON i.id = p.image_id"""
        ).fetchall()
    by_file = {Path(r["local_path"]).name: r for r in rows}
    assert scan.counts["seen"] == len(manifest)
    return manifest, by_file, cache


def test_every_corpus_file_ends_as_the_manifest_says(corpus_ingested) -> None:
    manifest, by_file, _ = corpus_ingested
    wrong = []
    for row in manifest:
        got = by_file[row["file"]]
        result = outcome(got["status"], got["error_kind"])
        if result not in expected_outcomes(row):
            wrong.append(f"{row['file']}: expected {row['expected']}, got {got['status']}/{got['error_kind']}: {got['error_message']}")
        if got["status"] in ("failed", "rejected"):
            assert got["error_message"], f"{row['file']} failed without a reason"
    assert not wrong, "\n".join(wrong)


def test_corpus_metadata_matches_the_manifest(corpus_ingested) -> None:
    manifest, by_file, _ = corpus_ingested
    for row in manifest:
        got = by_file[row["file"]]
        if got["status"] != "processed":
            continue
        if row["width"] != "-":  # "-": the manifest's author could not open the file (HEIF)
            assert (got["width"], got["height"]) == (int(row["width"]), int(row["height"])), row["file"]
        if row["n_frames"] not in ("-", "1") and row["expected"] == "animated":
            assert got["frame_count"] == int(row["n_frames"]), row["file"]
        if row["expected"] == "ok-gps":
            assert "gps" in got["exif_data"], row["file"]
        if row["expected"] == "ok-with-exif":
            assert got["exif_data"].get("make"), row["file"]


def test_corpus_thumbnails_are_upright(corpus_ingested, corpus_dir: Path) -> None:
    """Our thumbnail must match Pillow's reference (exif_transpose then thumbnail) pixel-wise."""
    manifest, by_file, cache = corpus_ingested
    checked = 0
    for row in manifest:
        got = by_file[row["file"]]
        if not row["expected"].startswith("orientation-") or got["status"] != "processed":
            continue
        with Image.open(corpus_dir / row["file"]) as src:
            reference = ImageOps.exif_transpose(src).convert("RGB")
        with Image.open(cache / got["thumbnail_key"]) as thumb:
            thumb = thumb.convert("RGB")
        reference.thumbnail((300, 300))
        expected_size = reference.size
        assert abs(thumb.width - expected_size[0]) <= 1 and abs(thumb.height - expected_size[1]) <= 1, row["file"]
        if min(thumb.size) < 8:
            continue  # a 2x1 image has no pixels to compare beyond its shape
        diff = ImageChops.difference(thumb.resize(reference.size), reference)
        mean = sum(ImageStat.Stat(diff).mean) / 3
        assert mean < 20, f"{row['file']}: thumbnail differs from the upright reference (mean diff {mean:.1f})"
        checked += 1
    assert checked >= 10

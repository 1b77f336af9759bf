"""raw_files + derivatives stage functions against the real embedded Postgres and real files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from support.bigtiff import bigtiff_bytes

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.dev.sample_data import make_photo, photo_exif, write_sample_tree
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.probe import probe_file
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards, resolve_shard, shard_key
from resources.image_library import ImageLibraryResource
from resources.object_store import content_type_for

SPEC = DerivativeSpec()
MAX_PIXELS = 120_000_000


def ingest_tree(dsn: str, images: Path, cache: Path, workers: int = 1, max_pixels: int = MAX_PIXELS) -> dict[str, int]:
    totals: dict[str, int] = {}
    with db.connect(dsn) as conn:
        for shard in discover_shards(images):
            scan = scan_shard(conn, shard, max_pixels=max_pixels)
            derived = derive_shard(conn, shard.key, cache_dir=cache, spec=SPEC, workers=workers)
            for report in (scan, derived):
                for k, v in report.counts.items():
                    totals[k] = totals.get(k, 0) + v
    return totals


def rows(dsn: str, sql: str, *params) -> list[dict]:
    with db.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def status_of(dsn: str) -> dict[str, tuple[str, str | None]]:
    return {
        Path(r["local_path"]).name: (r["status"], r["error_kind"])
        for r in rows(dsn, "SELECT local_path, status, error_kind FROM processing_log")
    }


@pytest.fixture
def sample(tmp_path: Path):
    tree = write_sample_tree(tmp_path / "images", photos_per_shard=3, photo_size=(1600, 1200))
    return tree, tmp_path / "cache"


def test_sample_tree_ingests_with_every_outcome_recorded(pg_dsn: str, sample) -> None:
    tree, cache = sample
    ingest_tree(pg_dsn, tree.root, cache)
    counts = {r["status"]: r["n"] for r in rows(pg_dsn, "SELECT status, count(*) AS n FROM processing_log GROUP BY 1")}
    assert counts == {"processed": tree.expected_ok, "failed": tree.expected_failed, "rejected": tree.expected_rejected}
    statuses = status_of(pg_dsn)
    assert statuses["empty.jpg"] == ("failed", "empty")
    assert statuses["not-a-photo.jpg"] == ("failed", "not-an-image")
    assert statuses["truncated.jpg"] == ("failed", "corrupt")
    assert statuses["notes.txt"] == ("rejected", "extension")
    failed = rows(pg_dsn, "SELECT error_message FROM processing_log WHERE status = 'failed'")
    assert all(r["error_message"] for r in failed)
    # one images row per distinct content, every processed one with its derivatives on disk
    images = rows(pg_dsn, "SELECT * FROM images WHERE derived_at IS NOT NULL")
    assert len(images) == tree.expected_ok
    for img in images:
        assert (cache / img["thumbnail_key"]).is_file() and (cache / img["preview_key"]).is_file()
        assert img["thumbnail_key"] == f"thumbnail/{img['id']}.webp"
        assert img["preview_key"] == f"watermarked/{img['id']}.jpg"
        assert len(img["palette"]) >= 1 and abs(sum(c["share"] for c in img["palette"]) - 1) < 0.01


def test_exif_and_gps_land_in_jsonb(pg_dsn: str, sample) -> None:
    tree, cache = sample
    ingest_tree(pg_dsn, tree.root, cache)
    with_gps = rows(pg_dsn, "SELECT exif_data, captured_at, original_key FROM images WHERE exif_data ? 'gps'")
    assert with_gps, "sample photos carry GPS"
    assert any(r["exif_data"]["gps"]["lat"] < 0 and r["exif_data"]["gps"]["lon"] < 0 for r in with_gps)
    for r in with_gps:
        assert r["exif_data"]["make"] and r["exif_data"]["model"]
        assert r["original_key"].startswith(f"original/{r['captured_at']:%Y}/{r['captured_at']:%m}/")


def test_rerun_is_a_no_op(pg_dsn: str, sample) -> None:
    tree, cache = sample
    ingest_tree(pg_dsn, tree.root, cache)
    before = rows(pg_dsn, "SELECT local_path, updated_at, attempts FROM processing_log ORDER BY 1")
    image_count = rows(pg_dsn, "SELECT count(*) AS n FROM images")[0]["n"]
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*.*")}
    second = ingest_tree(pg_dsn, tree.root, cache)
    assert second.get("new", 0) == 0 and second.get("changed", 0) == 0
    assert second["unchanged"] == tree.files
    assert second.get("processed", 0) == 0 and second.get("reused", 0) == 0
    assert rows(pg_dsn, "SELECT local_path, updated_at, attempts FROM processing_log ORDER BY 1") == before
    assert rows(pg_dsn, "SELECT count(*) AS n FROM images")[0]["n"] == image_count
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.*")} == mtimes  # nothing re-derived


def test_identical_files_share_one_image_and_changed_files_are_rescanned(pg_dsn: str, sample) -> None:
    tree, cache = sample
    ingest_tree(pg_dsn, tree.root, cache)
    source = next(tree.root.glob("street-2019/*.JPG"))
    copy = tree.root / "Ferien Sommer 2023" / "copy-of-street.jpg"
    shutil.copy(source, copy)
    stats = ingest_tree(pg_dsn, tree.root, cache)
    assert stats["new"] == 1 and stats["reused"] == 1 and stats.get("processed", 0) == 0
    pair = rows(pg_dsn, "SELECT local_path, image_id, status FROM processing_log WHERE local_path = ANY(%s)", [str(source), str(copy)])
    assert len(pair) == 2 and pair[0]["image_id"] == pair[1]["image_id"]
    assert {r["status"] for r in pair} == {"processed"}

    # overwrite the copy with different content: it is re-probed and becomes a new image
    make_photo(800, 600, seed=99).save(copy, "JPEG")
    stats = ingest_tree(pg_dsn, tree.root, cache)
    assert stats["changed"] == 1 and stats["processed"] == 1
    (row,) = rows(pg_dsn, "SELECT image_id, attempts FROM processing_log WHERE local_path = %s", str(copy))
    assert row["image_id"] != pair[0]["image_id"] and row["attempts"] == 2


def test_derivatives_have_right_sizes_formats_and_orientation(pg_dsn: str, sample) -> None:
    tree, cache = sample
    ingest_tree(pg_dsn, tree.root, cache, workers=2)
    photos = rows(
        pg_dsn,
        """SELECT i.*, (i.exif_data->>'orientation')::int AS orientation FROM images i
           WHERE format = 'JPEG' AND exif_data ? 'orientation'""",
    )
    assert {p["orientation"] for p in photos} == set(range(1, 9))
    for p in photos:
        with Image.open(cache / p["thumbnail_key"]) as thumb:
            assert thumb.format == "WEBP"
            assert max(thumb.size) == 300 and thumb.width > thumb.height  # upright landscape
            assert (thumb.width, thumb.height) == (p["thumbnail_width"], p["thumbnail_height"])
            r, g, b = thumb.convert("RGB").getpixel((5, 5))
            assert r > 150 and g < 100 and b < 100, f"marker not top-left for orientation {p['orientation']}"
            r, g, b = thumb.convert("RGB").getpixel((thumb.width - 5, thumb.height - 5))
            assert not (r > 150 and g < 100 and b < 100)
        with Image.open(cache / p["preview_key"]) as preview:
            assert preview.format == "JPEG" and preview.size == (1200, 900)


def test_small_images_are_not_upscaled_and_portraits_stay_portrait(pg_dsn: str, tmp_path: Path) -> None:
    shard = tmp_path / "images" / "s"
    shard.mkdir(parents=True)
    make_photo(200, 120, seed=1).save(shard / "small.jpg", "JPEG")
    # stored landscape, orientation 6: upright it is a portrait
    make_photo(1600, 1200, seed=2).save(shard / "sideways.jpg", "JPEG", exif=photo_exif(make="X", model="Y", taken=datetime(2020, 1, 1), orientation=6))
    ingest_tree(pg_dsn, tmp_path / "images", tmp_path / "cache")
    by_name = {
        Path(r["local_path"]).name: r
        for r in rows(pg_dsn, "SELECT p.local_path, i.* FROM processing_log p JOIN images i ON i.id = p.image_id")
    }
    small = by_name["small.jpg"]
    assert (small["preview_width"], small["preview_height"]) == (200, 120)
    assert (small["thumbnail_width"], small["thumbnail_height"]) == (200, 120)
    side = by_name["sideways.jpg"]
    assert (side["width"], side["height"]) == (1600, 1200)  # as stored
    assert (side["preview_width"], side["preview_height"]) == (900, 1200)
    assert (side["thumbnail_width"], side["thumbnail_height"]) == (225, 300)


def test_pixel_cap_rejects_bombs_and_wrong_extensions_are_judged_by_content(pg_dsn: str, tmp_path: Path) -> None:
    shard = tmp_path / "images" / "s"
    shard.mkdir(parents=True)
    make_photo(1000, 1000, seed=3).save(shard / "big.png", "PNG")
    make_photo(300, 200, seed=4).save(shard / "actually-png.jpg", "PNG")
    Image.new("RGB", (10, 10)).save(shard / "anim.jpg", "GIF")
    ingest_tree(pg_dsn, tmp_path / "images", tmp_path / "cache", max_pixels=500_000)
    statuses = status_of(pg_dsn)
    assert statuses["big.png"] == ("failed", "bomb")
    assert statuses["actually-png.jpg"] == ("processed", None)
    assert statuses["anim.jpg"] == ("failed", "unsupported-format")
    (row,) = rows(pg_dsn, "SELECT format, original_ext FROM images")
    assert (row["format"], row["original_ext"]) == ("PNG", "png")


def test_non_utf8_names_fail_with_a_clear_reason(pg_dsn: str, tmp_path: Path) -> None:
    shard = tmp_path / "images" / "s"
    shard.mkdir(parents=True)
    make_photo(100, 80, seed=5).save(os.fsencode(shard) + b"/caf\xe9.jpg", "JPEG")
    make_photo(100, 80, seed=6).save(shard / "fine.jpg", "JPEG")
    ingest_tree(pg_dsn, tmp_path / "images", tmp_path / "cache")
    (bad,) = rows(pg_dsn, "SELECT * FROM processing_log WHERE status = 'failed'")
    assert bad["local_path"].endswith("caf\\xe9.jpg") and bad["error_kind"] == "bad-name"
    assert status_of(pg_dsn)["fine.jpg"] == ("processed", None)


def _unreadable_probe(path: str, size: int, queue) -> None:
    os.setgid(65534)
    os.setuid(65534)  # nobody: root reads anything, so drop privileges to see EACCES
    queue.put(probe_file(path, size, MAX_PIXELS).error_message)


def test_unreadable_files_are_recorded_as_failed() -> None:
    import multiprocessing
    import tempfile

    # Not under pytest's basetemp: its root is 0700, and `nobody` must be stopped by the file's
    # own mode, not by a folder it cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="assemblage-unreadable-"))
    try:
        folder.chmod(0o755)
        path = folder / "locked.jpg"
        make_photo(50, 50, seed=7).save(path, "JPEG")
        path.chmod(0)
        size = path.stat().st_size
        if os.geteuid() != 0:
            result = probe_file(str(path), size, MAX_PIXELS)
            assert (result.error_kind, result.error_message) == ("unreadable", "permission denied: Permission denied")
            return
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_unreadable_probe, args=(str(path), size, queue))
        child.start()
        child.join(30)
        assert queue.get(timeout=5) == "permission denied: Permission denied"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KILL_SCRIPT = """
import sys
from pathlib import Path
from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.images.derive import derive_shard
with db.connect(sys.argv[1]) as conn:
    derive_shard(conn, sys.argv[2], cache_dir=Path(sys.argv[3]), spec=DerivativeSpec(), workers=1, commit_every=2)
"""


def test_run_killed_mid_shard_resumes_with_one_row_per_image(pg_dsn: str, tmp_path: Path) -> None:
    shard_dir = tmp_path / "images" / "big shard"
    shard_dir.mkdir(parents=True)
    for i in range(40):
        make_photo(1600, 1200, seed=100 + i).save(shard_dir / f"p{i:03}.jpg", "JPEG", quality=90)
    key = shard_key("big shard")
    cache = tmp_path / "cache"
    with db.connect(pg_dsn) as conn:
        scan_shard(conn, resolve_shard(tmp_path / "images", key), max_pixels=MAX_PIXELS)
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, pg_dsn, key, str(cache)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = rows(pg_dsn, "SELECT count(*) AS n FROM processing_log WHERE status = 'processed'")[0]["n"]
        if done >= 6:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = rows(pg_dsn, "SELECT count(*) AS n FROM processing_log WHERE status = 'processed'")[0]["n"]
    assert 6 <= partial < 40, "the kill must land mid-shard"

    with db.connect(pg_dsn) as conn:
        report = derive_shard(conn, key, cache_dir=cache, spec=SPEC, workers=1)
    assert report.counts["processed"] == 40 - partial
    stats = rows(pg_dsn, "SELECT count(*) AS files, count(DISTINCT image_id) AS images, count(*) FILTER (WHERE status = 'processed') AS done FROM processing_log")[0]
    assert stats == {"files": 40, "images": 40, "done": 40}
    assert rows(pg_dsn, "SELECT count(*) AS n FROM images")[0]["n"] == 40
    for img in rows(pg_dsn, "SELECT preview_key FROM images"):
        with Image.open(cache / img["preview_key"]) as preview:
            preview.load()  # every recorded derivative is complete


def test_bigtiff_is_ingested_end_to_end(pg_dsn: str, tmp_path: Path) -> None:
    shard = tmp_path / "images" / "scans"
    shard.mkdir(parents=True)
    make_photo(640, 400, seed=21).save(shard / "pillow-bigtiff.tif", "TIFF", big_tiff=True)
    (shard / "built-bigtiff.tiff").write_bytes(bigtiff_bytes(make_photo(500, 250, seed=22), "II"))
    (shard / "big-endian-bigtiff.tif").write_bytes(bigtiff_bytes(make_photo(300, 200, seed=23), "MM"))
    assert (shard / "pillow-bigtiff.tif").read_bytes()[:4] == b"II+\x00"
    ingest_tree(pg_dsn, tmp_path / "images", tmp_path / "cache")
    by_name = {
        Path(r["local_path"]).name: r
        for r in rows(pg_dsn, "SELECT p.local_path, p.status, p.error_kind, p.error_message, i.* "
                               "FROM processing_log p LEFT JOIN images i ON i.id = p.image_id")
    }
    for name, size in (("pillow-bigtiff.tif", (640, 400)), ("built-bigtiff.tiff", (500, 250))):
        got = by_name[name]
        assert (got["status"], got["error_kind"]) == ("processed", None), got["error_message"]
        assert (got["format"], got["original_ext"], (got["width"], got["height"])) == ("TIFF", "tiff", size)
        assert got["original_key"].endswith(f"/{got['id']}.tiff")
        with Image.open(tmp_path / "cache" / got["thumbnail_key"]) as thumb:
            assert max(thumb.size) == 300 and (thumb.width, thumb.height) == (got["thumbnail_width"], got["thumbnail_height"])
    # Recognised as a TIFF either way; Pillow 13 cannot read big-endian BigTIFF (it tests only
    # the little-endian magic), so that one is a TIFF that does not decode, not "not an image".
    big_endian = by_name["big-endian-bigtiff.tif"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow reads the header as a classic TIFF's: "Corrupt EXIF"
            with Image.open(shard / "big-endian-bigtiff.tif") as img:
                img.load()
        pillow_reads_it = True
    except OSError:
        pillow_reads_it = False
    if pillow_reads_it:
        assert big_endian["status"] == "processed"
    else:
        assert (big_endian["status"], big_endian["error_kind"]) == ("failed", "corrupt")
        assert big_endian["error_message"].startswith("corrupt TIFF header")


def test_thumbnail_size_and_format_come_from_the_environment(
    assemblage_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The older system's thumbnails: THUMBNAIL_SIZE=200 THUMBNAIL_FORMAT=jpeg."""
    monkeypatch.setenv("THUMBNAIL_SIZE", "200")
    monkeypatch.setenv("THUMBNAIL_FORMAT", "jpeg")
    library = ImageLibraryResource.from_env()
    spec = library.derivative_spec()
    shard = Path(assemblage_env["IMAGES_DIR"]) / "legacy"
    shard.mkdir()
    make_photo(1600, 1200, seed=31).save(shard / "photo.jpg", "JPEG")
    clear = Image.new("RGBA", (400, 300), (0, 0, 255, 255))
    clear.paste((0, 0, 0, 0), (0, 0, 200, 300))  # left half transparent
    clear.save(shard / "half-clear.png", "PNG")
    with db.connect(assemblage_env["DATABASE_URL"]) as conn:
        for found in discover_shards(library.root):
            scan_shard(conn, found, max_pixels=MAX_PIXELS)
            derive_shard(conn, found.key, cache_dir=library.cache, spec=spec, workers=1)
    by_name = {
        Path(r["local_path"]).name: r
        for r in rows(assemblage_env["DATABASE_URL"],
                      "SELECT p.local_path, p.status, i.* FROM processing_log p JOIN images i ON i.id = p.image_id")
    }
    for name, size in (("photo.jpg", (200, 150)), ("half-clear.png", (200, 150))):
        got = by_name[name]
        assert got["status"] == "processed"
        assert got["thumbnail_key"] == f"thumbnail/{got['id']}.jpg"
        assert content_type_for(got["thumbnail_key"]) == "image/jpeg"
        assert not (library.cache / f"thumbnail/{got['id']}.webp").exists()
        with Image.open(library.cache / got["thumbnail_key"]) as thumb:
            assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "RGB", size)
            assert (got["thumbnail_width"], got["thumbnail_height"]) == size
            if name == "half-clear.png":  # no alpha in JPEG: flattened on white, like previews
                assert min(thumb.getpixel((20, 75))) > 240 and thumb.getpixel((180, 75))[2] > 200
    # a rerun finds the JPEG thumbnails in the cache: nothing is derived again
    with db.connect(assemblage_env["DATABASE_URL"]) as conn:
        again = derive_shard(conn, "legacy", cache_dir=library.cache, spec=spec, workers=1)
    assert again.counts.get("processed", 0) == 0


def test_thumbnail_settings_default_to_300_px_webp_and_are_checked(
    assemblage_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ImageLibraryResource.from_env().derivative_spec()
    assert (spec.thumbnail_box, spec.thumbnail_format) == (300, "webp")
    monkeypatch.setenv("THUMBNAIL_FORMAT", "gif")
    with pytest.raises(ValueError, match="THUMBNAIL_FORMAT"):
        ImageLibraryResource.from_env()
    monkeypatch.setenv("THUMBNAIL_FORMAT", "PNG")
    monkeypatch.setenv("THUMBNAIL_SIZE", "0")
    with pytest.raises(ValueError, match="THUMBNAIL_SIZE"):
        ImageLibraryResource.from_env()
    monkeypatch.setenv("THUMBNAIL_SIZE", "128")
    spec = ImageLibraryResource.from_env().derivative_spec()
    assert (spec.thumbnail_box, spec.thumbnail_format) == (128, "png")

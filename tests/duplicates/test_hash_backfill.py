"""Hashes and ThumbHash for images derived before those columns existed: filled from the original
(derive's exact values), else the cached or stored thumbnail; a broken or missing source is a
recorded error of that image only; reruns write nothing; the `duplicates` asset backfills before
grouping, so an old image is grouped with a new shard's variant."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image
from support.s3_loopback import S3Env

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.core.perceptual import hamming
from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.duplicates.config import DuplicateSettings
from assemblage_assets.duplicates.listing import list_groups
from assemblage_assets.duplicates.stage import group_shard
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.hash_backfill import backfill_shard, count_missing
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from resources.object_store import LocalObjectStore, ObjectSpec, ObjectStore, PermanentObjectError

SPEC = DerivativeSpec()
HASHES = "SELECT i.id::text AS id, i.phash, i.dhash, i.thumbhash, p.local_path FROM images i " \
         "JOIN processing_log p ON p.image_id = i.id ORDER BY p.local_path"


def _write(folder: Path, photos: dict[str, Image.Image]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in photos.items():
        img.save(folder / name, quality=90)


def _ingest(dsn: str, images: Path, cache: Path, shard: str) -> None:
    (entry,) = [s for s in discover_shards(images) if s.key == shard]
    with db.connect(dsn) as conn:
        scan_shard(conn, entry, max_pixels=120_000_000)
        derive_shard(conn, shard, cache_dir=cache, spec=SPEC, workers=1)


def _rows(dsn: str) -> dict[str, dict]:
    with db.connect(dsn) as conn:
        return {Path(r["local_path"]).name: r for r in conn.execute(HASHES).fetchall()}


def _forget_hashes(dsn: str) -> None:
    """What a catalogue derived before migration 0007 looks like."""
    with db.connect(dsn) as conn:
        conn.execute("UPDATE images SET phash = NULL, dhash = NULL, thumbhash = NULL")


def _backfill(dsn: str, shard: str, cache: Path, store: ObjectStore | None = None, workers: int = 1):
    with db.connect(dsn) as conn:
        return backfill_shard(
            conn, shard, cache_dir=cache, spec=SPEC, page_size=2, workers=workers,
            read_store=(lambda key: store.read("public", key)) if store else None,
            store_key=store.key if store else (lambda key: key),
        )


def _old_shard(tmp_path: Path, dsn: str, n: int = 3) -> tuple[Path, Path, dict[str, dict]]:
    images, cache = tmp_path / "images", tmp_path / "cache"
    _write(images / "old", {f"p{i}.jpg": make_photo(640, 480, 40 + i) for i in range(n)})
    _ingest(dsn, images, cache, "old")
    derived = _rows(dsn)
    assert all(r["phash"] is not None and r["thumbhash"] for r in derived.values())
    _forget_hashes(dsn)
    return images, cache, derived


def test_backfill_from_the_originals_gives_derives_exact_values_and_reruns_write_nothing(
    pg_dsn: str, tmp_path: Path
) -> None:
    _, cache, derived = _old_shard(tmp_path, pg_dsn, n=5)
    with db.connect(pg_dsn) as conn:
        assert count_missing(conn, "old") == 5
    report = _backfill(pg_dsn, "old", cache, workers=2)  # pages of 2: three pages, decoded in 2 processes
    assert report.counts["backfilled"] == 5 and report.counts["from_original"] == 5 and report.counts["failed"] == 0
    after = _rows(pg_dsn)
    for name, row in derived.items():
        assert (after[name]["phash"], after[name]["dhash"], after[name]["thumbhash"]) == (
            row["phash"], row["dhash"], row["thumbhash"])
    again = _backfill(pg_dsn, "old", cache)
    assert again.counts["backfilled"] == 0 and again.counts["failed"] == 0
    with db.connect(pg_dsn) as conn:
        assert count_missing(conn, "old") == 0


def test_without_the_original_the_cached_thumbnail_is_used_and_a_broken_one_is_a_recorded_error(
    pg_dsn: str, tmp_path: Path
) -> None:
    images, cache, derived = _old_shard(tmp_path, pg_dsn)
    for name in derived:
        (images / "old" / name).unlink()  # e.g. a staged copy released after publishing
    broken = cache / "thumbnail" / f"{derived['p1.jpg']['id']}.webp"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WEBPnot really")
    report = _backfill(pg_dsn, "old", cache)
    assert report.counts["backfilled"] == 2 and report.counts["from_cache"] == 2 and report.counts["failed"] == 1
    after = _rows(pg_dsn)
    for name in ("p0.jpg", "p2.jpg"):
        # the lossy thumbnail decoded again: within the bits benchmarks/hash_sources.py measured
        assert hamming(after[name]["phash"], derived[name]["phash"]) <= 2
        assert hamming(after[name]["dhash"], derived[name]["dhash"]) <= 8
        assert after[name]["thumbhash"] and len(after[name]["thumbhash"]) == len(derived[name]["thumbhash"])
    assert after["p1.jpg"]["phash"] is None
    with db.connect(pg_dsn) as conn:
        note = conn.execute("SELECT status, error_kind, error_message FROM processing_log WHERE image_id = %s",
                            (derived["p1.jpg"]["id"],)).fetchone()
    assert note["status"] == "processed" and note["error_kind"] == "hash-backfill"  # status untouched
    assert "cached thumbnail" in note["error_message"] and "original" in note["error_message"]

    # the thumbnail is derived again: the next run fills the image and clears its note
    derived_file = cache / "thumbnail" / f"{derived['p0.jpg']['id']}.webp"
    Image.open(derived_file).save(broken, "WEBP")
    retry = _backfill(pg_dsn, "old", cache)
    assert retry.counts["backfilled"] == 1 and retry.counts["failed"] == 0
    with db.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) AS n FROM processing_log WHERE error_kind = 'hash-backfill'"
                            ).fetchone()["n"] == 0


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_published_image_without_original_or_cache_is_hashed_from_the_store(
    pg_dsn: str, tmp_path: Path, backend: str
) -> None:
    images, cache, derived = _old_shard(tmp_path, pg_dsn, n=2)
    if backend == "s3":
        s3 = S3Env.shared()
        store: ObjectStore = s3.store(s3.new_bucket("hashes"), prefix="cat")
    else:
        store = LocalObjectStore(root=str(tmp_path / "objects"), prefix="cat")
    with db.connect(pg_dsn) as conn:
        publish_shard(conn, "old", store=store, cache_dir=cache)
    for name in derived:
        (images / "old" / name).unlink()
    for thumb in (cache / "thumbnail").iterdir():
        thumb.unlink()
    report = _backfill(pg_dsn, "old", cache, store)
    assert report.counts["from_store"] == 2 and report.counts["failed"] == 0
    assert store.request_counts()["GetObject"] == 2
    after = _rows(pg_dsn)
    for name, row in derived.items():
        assert hamming(after[name]["phash"], row["phash"]) <= 2 and after[name]["thumbhash"]


def test_a_value_set_meanwhile_is_never_overwritten(pg_dsn: str, tmp_path: Path) -> None:
    _, cache, derived = _old_shard(tmp_path, pg_dsn, n=1)
    with db.connect(pg_dsn) as conn:  # only the placeholder is missing
        conn.execute("UPDATE images SET phash = 12345, dhash = 678")
    assert _backfill(pg_dsn, "old", cache).counts["backfilled"] == 1
    row = _rows(pg_dsn)["p0.jpg"]
    assert (row["phash"], row["dhash"], row["thumbhash"]) == (12345, 678, derived["p0.jpg"]["thumbhash"])


def test_duplicates_asset_backfills_an_old_shard_and_groups_it_with_a_new_variant(
    assemblage_env: dict[str, str], tmp_path: Path
) -> None:
    from assemblage_assets.duplicates.assets import duplicates
    from assemblage_assets.partitions import IMAGE_SHARDS
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    dsn, images, cache = assemblage_env["DATABASE_URL"], Path(assemblage_env["IMAGES_DIR"]), tmp_path / "cache"
    beach, forest = make_photo(800, 600, 1), make_photo(800, 600, 2)
    _write(images / "old", {"beach.jpg": beach, "forest.jpg": forest})
    _ingest(dsn, images, cache, "old")
    _forget_hashes(dsn)
    _write(images / "new", {"beach-small.jpg": beach.resize((400, 300), Image.Resampling.LANCZOS)})
    _ingest(dsn, images, cache, "new")
    with db.connect(dsn) as conn:  # without the backfill the old beach is invisible to grouping
        assert group_shard(conn, "new", config=DuplicateSettings(), model=None).counts["grouped"] == 0
        assert list_groups(conn, None) == []

    resources = {
        "database": PostgresResource(dsn=dsn),
        "library": ImageLibraryResource(images_dir=str(images), derivative_cache_dir=str(cache), derive_workers=1),
        "object_store": LocalObjectStore(root=str(tmp_path / "objects")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, ["old"])
        result = dg.materialize([duplicates], partition_key="old", instance=instance, resources=resources)
        meta = result.asset_materializations_for_node("duplicates")[0].metadata
        assert meta["hashes_backfilled"].value == 2 and meta["hashes_from_original"].value == 2
        assert meta["hashes_failed"].value == 0 and meta["checked"].value == 2
        rerun = dg.materialize([duplicates], partition_key="old", instance=instance, resources=resources)
        assert rerun.asset_materializations_for_node("duplicates")[0].metadata["hashes_backfilled"].value == 0
    with db.connect(dsn) as conn:
        groups = [sorted(Path(i["path"]).name for i in g["images"]) for g in list_groups(conn, None)]
    assert groups == [["beach-small.jpg", "beach.jpg"]]


def test_a_settled_shard_with_images_missing_hashes_is_not_idle_for_ingest(pg_dsn: str, tmp_path: Path) -> None:
    """`assemblage ingest` skips idle shards; an old settled shard must still get its backfill run."""
    from assemblage_assets.images import idle

    images, cache = tmp_path / "images", tmp_path / "cache"
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    _write(images / "old", {f"p{i}.jpg": make_photo(320, 240, 60 + i) for i in range(2)})
    _ingest(pg_dsn, images, cache, "old")
    with db.connect(pg_dsn) as conn:
        publish_shard(conn, "old", store=store, cache_dir=cache, skip_settled=True)
        (plan,) = idle.plan_ingest(conn, images, ["old"], store)
        assert plan.idle  # settled: nothing to do
    _forget_hashes(pg_dsn)
    with db.connect(pg_dsn) as conn:
        (plan,) = idle.plan_ingest(conn, images, ["old"], store)
    assert not plan.idle and "perceptual hashes" in plan.reason

    # one image has no readable source left: after its failed attempt it no longer keeps the shard busy
    first = sorted(_rows(pg_dsn).values(), key=lambda r: r["local_path"])[0]
    original = Path(first["local_path"])
    stat = original.stat()
    original.write_bytes(b"\0" * stat.st_size)  # damaged in place, size and mtime kept: the rescan sees no change
    os.utime(original, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (cache / "thumbnail" / f"{first['id']}.webp").unlink()
    (tmp_path / "objects" / "thumbnail" / f"{first['id']}.webp").unlink()
    report = _backfill(pg_dsn, "old", cache, store)
    assert report.counts["backfilled"] == 1 and report.counts["failed"] == 1
    with db.connect(pg_dsn) as conn:
        (plan,) = idle.plan_ingest(conn, images, ["old"], store)
    assert plan.idle, plan.reason


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_object_store_read_returns_the_bytes_none_when_absent_and_refuses_large_objects(
    tmp_path: Path, backend: str
) -> None:
    if backend == "s3":
        s3 = S3Env.shared()
        store: ObjectStore = s3.store(s3.new_bucket("reads"))
    else:
        store = LocalObjectStore(root=str(tmp_path / "objects"))
    source = tmp_path / "t.webp"
    source.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    store.put(ObjectSpec(key="thumbnail/a.webp", visibility="public", sources=(source,), content_type="image/webp",
                         cache_control="public"))
    assert store.read("public", "thumbnail/a.webp") == source.read_bytes()
    assert store.read("public", "thumbnail/absent.webp") is None
    with pytest.raises(PermanentObjectError, match="over 100 bytes"):
        store.read("public", "thumbnail/a.webp", max_bytes=100)

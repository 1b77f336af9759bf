"""Rescans that cost nothing but miss nothing: the scan compared in the database (new, changed,
deleted, unchanged files), the read-only check of which shards have work, the store's last
full check that lets ``r2_objects`` skip a settled shard, and the CLI skipping idle shards."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row
from support.s3_loopback import S3Env

from assemblage_assets.core import db
from assemblage_assets.dev.sample_data import make_photo, write_sample_tree
from assemblage_assets.images import idle, rescan, verification
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import iter_shard_files, scan_shard
from assemblage_assets.images.shards import resolve_shard, shard_key
from resources.image_library import ImageLibraryResource
from resources.object_store import LocalObjectStore

SHARD = "street-2019"
MAX_PIXELS = 120_000_000
BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def _rows(dsn: str, sql: str, *params: object) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def _scan(dsn: str, root: Path, key: str = SHARD) -> dict[str, int]:
    with db.connect(dsn) as conn:
        return dict(scan_shard(conn, resolve_shard(root, key), max_pixels=MAX_PIXELS).counts)


def _work(dsn: str, root: Path, key: str = SHARD) -> rescan.ShardWork:
    with db.connect(dsn) as conn:
        return rescan.shard_work(conn, key, lambda: iter_shard_files(resolve_shard(root, key)))


@pytest.fixture
def tree(tmp_path: Path):
    return write_sample_tree(tmp_path / "src", photos_per_shard=4, photo_size=(320, 240))


def test_rescan_finds_exactly_the_new_changed_and_deleted_files(pg_dsn: str, tree) -> None:
    first = _scan(pg_dsn, tree.root)
    files = first["seen"]
    assert first["new"] == files and first.get("unchanged", 0) == 0
    before = _rows(pg_dsn, "SELECT local_path, updated_at, attempts FROM processing_log ORDER BY 1")

    again = _scan(pg_dsn, tree.root)
    assert (again["seen"], again["unchanged"], again["new"], again["changed"], again["deleted"]) == (files, files, 0, 0, 0)
    assert _rows(pg_dsn, "SELECT local_path, updated_at, attempts FROM processing_log ORDER BY 1") == before

    shard = tree.root / SHARD
    photos = sorted(p for p in shard.rglob("*") if p.suffix.lower() == ".jpg")
    added = shard / "day2" / "added.jpg"
    make_photo(320, 240, seed=501).save(added, "JPEG")
    # same size, new mtime: a rewrite in place must be seen even when the size did not move
    touched = photos[0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    resized = photos[1]
    make_photo(200, 150, seed=502).save(resized, "JPEG")
    gone = photos[2]
    gone.unlink()

    counts = _scan(pg_dsn, tree.root)
    assert (counts["new"], counts["changed"], counts["deleted"]) == (1, 2, 1)
    assert counts["unchanged"] == files - 3 and counts["seen"] == files
    by_path = {r["local_path"]: r for r in _rows(pg_dsn, "SELECT * FROM processing_log WHERE shard = %s", SHARD)}
    assert by_path[str(added)]["status"] == "pending"
    assert by_path[str(touched)]["attempts"] == 2 and by_path[str(resized)]["attempts"] == 2
    assert by_path[str(resized)]["file_size"] == resized.stat().st_size
    assert (by_path[str(gone)]["status"], by_path[str(gone)]["error_kind"]) == ("failed", "deleted")
    assert by_path[str(gone)]["image_id"] is not None  # the image stays in the catalogue

    # A row removed behind the scan's back: the walk is the same, the shard's row count is not.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM processing_log WHERE local_path = %s", (str(added),))
    assert _scan(pg_dsn, tree.root)["new"] == 1
    assert _scan(pg_dsn, tree.root)["unchanged"] == files

    # A deletion is recorded once; a file coming back at the path is probed again.
    assert _scan(pg_dsn, tree.root)["deleted"] == 0
    make_photo(320, 240, seed=503).save(gone, "JPEG")
    back = _scan(pg_dsn, tree.root)
    assert back["changed"] == 1 and back["deleted"] == 0
    (row,) = _rows(pg_dsn, "SELECT status, error_kind FROM processing_log WHERE local_path = %s", str(gone))
    assert (row["status"], row["error_kind"]) == ("pending", None)


def test_undecodable_and_awkward_names_survive_the_round_trip(pg_dsn: str, tmp_path: Path) -> None:
    shard = tmp_path / "src" / "odd"
    shard.mkdir(parents=True)
    names = [b"tab\there.jpg", b"back\\slash.jpg", b"new\nline.jpg", b"caf\xe9-latin1.jpg", "ünï.jpg".encode()]
    for i, name in enumerate(names):
        make_photo(64, 48, seed=600 + i).save(os.fsdecode(os.path.join(os.fsencode(shard), name)), "JPEG")
    first = _scan(pg_dsn, tmp_path / "src", "odd")
    assert first["new"] == len(names)
    assert _scan(pg_dsn, tmp_path / "src", "odd")["unchanged"] == len(names)
    paths = {r["local_path"] for r in _rows(pg_dsn, "SELECT local_path FROM processing_log")}
    assert str(shard / "caf\\xe9-latin1.jpg") in paths and str(shard / "new\nline.jpg") in paths
    statuses = {r["local_path"].rsplit("/", 1)[1]: (r["status"], r["error_kind"])
                for r in _rows(pg_dsn, "SELECT local_path, status, error_kind FROM processing_log")}
    assert statuses["caf\\xe9-latin1.jpg"] == ("failed", "bad-name")  # probed from its OS path
    assert statuses["tab\there.jpg"] == ("pending", None)


def test_shard_work_counts_without_writing(pg_dsn: str, tree) -> None:
    _scan(pg_dsn, tree.root)
    work = _work(pg_dsn, tree.root)
    assert (work.new, work.changed, work.deleted) == (0, 0, 0) and work.pending > 0 and not work.idle
    before = _rows(pg_dsn, "SELECT * FROM processing_log ORDER BY local_path")
    next((tree.root / SHARD).rglob("*.JPG")).unlink()
    make_photo(64, 48, seed=700).save(tree.root / SHARD / "fresh.jpg", "JPEG")
    work = _work(pg_dsn, tree.root)
    assert (work.new, work.deleted) == (1, 1)
    assert _rows(pg_dsn, "SELECT * FROM processing_log ORDER BY local_path") == before


def _ingested(dsn: str, root: Path, cache: Path, store) -> None:
    with db.connect(dsn) as conn:
        scan_shard(conn, resolve_shard(root, SHARD), max_pixels=MAX_PIXELS)
        derive_shard(conn, SHARD, cache_dir=cache, workers=1, spec=ImageLibraryResource(
            images_dir=str(root), derivative_cache_dir=str(cache)).derivative_spec())
        publish_shard(conn, SHARD, store=store, cache_dir=cache, skip_settled=True)


def test_a_settled_shard_is_not_listed_again_until_something_changes(pg_dsn: str, tree, tmp_path: Path) -> None:
    s3 = S3Env.shared()
    bucket = s3.new_bucket()
    cache = tmp_path / "cache"
    _ingested(pg_dsn, tree.root, cache, s3.store(bucket))
    images = len(s3.keys(bucket)) // 3
    assert images > 0

    s3.proxy.reset()
    with db.connect(pg_dsn) as conn:
        report = publish_shard(conn, SHARD, store=s3.store(bucket), cache_dir=cache, skip_settled=True)
    assert report.counts["settled"] == 1 and report.counts["images"] == images
    assert s3.proxy.counts() == {}  # not one request to the store

    # another prefix or public URL base is another store: checked in full
    with db.connect(pg_dsn) as conn:
        assert not verification.settlement(conn, SHARD, s3.store(bucket, prefix="other")).settled
        assert not verification.settlement(conn, SHARD, s3.store(bucket, public_base_url="https://cdn.example")).settled

    # the explicit full check lists the bucket and puts back an object deleted behind our back
    lost = sorted(s3.keys(bucket))[0]
    s3.direct().delete_object(Bucket=bucket, Key=lost)
    s3.proxy.reset()
    with db.connect(pg_dsn) as conn:
        report = publish_shard(conn, SHARD, store=s3.store(bucket), cache_dir=cache, skip_settled=False)
    assert report.counts["objects_uploaded"] == 1 and s3.proxy.counts()["LIST"] >= 1
    assert lost in s3.keys(bucket)

    # a new image in the shard unsettles it: the next run publishes it (and checks the rest)
    make_photo(320, 240, seed=800).save(tree.root / SHARD / "new.jpg", "JPEG")
    _ingested(pg_dsn, tree.root, cache, s3.store(bucket))
    assert len(s3.keys(bucket)) == 3 * (images + 1)
    with db.connect(pg_dsn) as conn:
        assert verification.settlement(conn, SHARD, s3.store(bucket)).settled


def test_plan_names_only_the_shards_with_work(pg_dsn: str, tree, tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    cache = tmp_path / "cache"
    _ingested(pg_dsn, tree.root, cache, store)
    other = next(shard_key(k) for k in tree.shards if k != SHARD)
    with db.connect(pg_dsn) as conn:
        plans = {p.shard: p for p in idle.plan_ingest(conn, tree.root, [SHARD, other], store)}
    assert plans[SHARD].idle and not plans[other].idle and "new" in plans[other].reason
    (tree.root / SHARD / "day2").joinpath("late.jpg").write_bytes(b"not really a jpeg")
    with db.connect(pg_dsn) as conn:
        (plan,) = idle.plan_ingest(conn, tree.root, [SHARD], store)
    assert not plan.idle and plan.reason.startswith("1 new")


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([str(BIN / "assemblage"), *args], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_ingest_cli_starts_runs_only_for_shards_with_changes(assemblage_env: dict[str, str]) -> None:
    tree = write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=2, photo_size=(160, 120))
    shards = len(tree.shards) + 1
    _cli(assemblage_env, "ingest", "--images-dir", str(tree.root))
    instance = dg.DagsterInstance.from_config(assemblage_env["DAGSTER_HOME"])
    assert len(instance.get_runs()) == shards

    out = _cli(assemblage_env, "ingest", "--images-dir", str(tree.root))
    assert f"{shards} of {shards} shard(s) have nothing to do" in out and "0/0 shard run(s) succeeded" in out
    assert len(instance.get_runs()) == shards

    make_photo(160, 120, seed=900).save(tree.root / SHARD / "one-more.jpg", "JPEG")
    out = _cli(assemblage_env, "ingest", "--images-dir", str(tree.root))
    assert "1/1 shard run(s) succeeded" in out and f"{SHARD}: 1 new" in out
    status = subprocess.run([str(BIN / "assemblage"), "status", "--json"], env={**os.environ, **assemblage_env},
                            capture_output=True, text=True, timeout=600, check=True).stdout
    assert json.loads(status)["status_counts"]["uploaded"] == tree.expected_ok + 1

    # An object deleted behind the catalogue's back: a no-op ingest does not look (the spot
    # check samples inside runs); the explicit full check puts it back.
    lost = next((Path(assemblage_env["ASSEMBLAGE_HOME"]) / "objects" / "watermarked").glob("*.jpg"))
    lost.unlink()
    assert "0/0 shard run(s)" in _cli(assemblage_env, "ingest", "--images-dir", str(tree.root))
    out = _cli(assemblage_env, "verify-objects", "--images-dir", str(tree.root))
    assert f"{shards}/{shards} shard run(s) succeeded" in out and lost.exists()
    out = _cli(assemblage_env, "ingest", "--images-dir", str(tree.root), "--every-shard")
    assert f"{shards}/{shards} shard run(s) succeeded" in out

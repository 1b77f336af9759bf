"""Publishing shards (``publish_shard`` and the ``r2_objects`` asset) against moto's standalone
server over real HTTP and against the local store: layout, content types, catalogue rows, zero
PUTs on a rerun, resume after a kill, transient faults, per-image failures, bad credentials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row
from support.s3_loopback import SECRET_KEY, S3Env, Seen, set_moto_auth

from assemblage_assets.core import db
from assemblage_assets.dev.sample_data import write_sample_tree
from assemblage_assets.images.assets import r2_objects
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import resolve_shard
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource
from resources.object_store import LocalObjectStore, ObjectStore

SHARD = "street-2019"
PHOTOS = 6  # street-2019 then holds 6 photos (2 in day2/): 18 objects


@dataclass
class Shard:
    dsn: str
    images: Path
    cache: Path

    def rows(self, sql: str, *params: object) -> list[dict]:
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def expected(self, store: ObjectStore) -> dict[str, tuple[str, bytes]]:
        """Every key the shard must have in the store -> (visibility, bytes)."""
        out = {}
        for row in self.rows(
            """SELECT DISTINCT ON (i.id) i.original_key, i.thumbnail_key, i.preview_key, p.local_path
               FROM images i JOIN processing_log p ON p.image_id = i.id
               WHERE p.shard = %s AND p.status <> 'failed' ORDER BY i.id""",
            SHARD,
        ):
            out[store.key(row["original_key"])] = ("private", Path(row["local_path"]).read_bytes())
            out[store.key(row["thumbnail_key"])] = ("public", (self.cache / row["thumbnail_key"]).read_bytes())
            out[store.key(row["preview_key"])] = ("public", (self.cache / row["preview_key"]).read_bytes())
        return out

    def statuses(self) -> dict[str, int]:
        rows = self.rows("SELECT status, count(*) AS n FROM processing_log WHERE shard = %s GROUP BY status", SHARD)
        return {r["status"]: r["n"] for r in rows}

    def publish(self, store: ObjectStore, **kw):
        with db.connect(self.dsn) as conn:
            return publish_shard(conn, SHARD, store=store, cache_dir=self.cache, **kw)


@pytest.fixture
def shard(pg_dsn: str, tmp_path: Path) -> Shard:
    """A processed shard: the sample tree's street-2019 scanned and derived."""
    tree = write_sample_tree(tmp_path / "src", photos_per_shard=PHOTOS, photo_size=(800, 600))
    cache = tmp_path / "cache"
    with db.connect(pg_dsn) as conn:
        scan_shard(conn, resolve_shard(tree.root, SHARD), max_pixels=120_000_000)
        derive_shard(conn, SHARD, cache_dir=cache, spec=ImageLibraryResource(
            images_dir=str(tree.root), derivative_cache_dir=str(cache)).derivative_spec(), workers=1)
    result = Shard(pg_dsn, tree.root, cache)
    assert result.statuses() == {"processed": PHOTOS}
    return result


@pytest.fixture
def s3() -> S3Env:
    return S3Env.shared()


def _stored(s3: S3Env, *buckets: str) -> dict[str, bytes]:
    client = s3.direct()
    return {
        key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for bucket in buckets for key in s3.keys(bucket)
    }


def test_publish_to_s3_layout_content_types_and_catalogue_rows(s3: S3Env, shard: Shard) -> None:
    public, private = s3.new_bucket("pub"), s3.new_bucket("priv")
    store = s3.store(public, private_bucket=private, prefix="assemblage", public_base_url="https://img.example.org")
    report = shard.publish(store)
    assert report.counts["images_published"] == PHOTOS and report.counts["objects_uploaded"] == 3 * PHOTOS
    assert report.counts["images_failed"] == 0 and report.bytes > 0

    expected = shard.expected(store)
    assert len(expected) == 3 * PHOTOS
    assert set(s3.keys(private)) == {k for k, (vis, _) in expected.items() if vis == "private"}
    assert _stored(s3, public, private) == {k: data for k, (_, data) in expected.items()}
    client = s3.direct()
    for key, (visibility, _) in expected.items():
        head = client.head_object(Bucket=private if visibility == "private" else public, Key=key)
        if key.startswith("assemblage/original/"):
            assert head["ContentType"] == "image/jpeg" and head["CacheControl"].startswith("private")
        elif key.startswith("assemblage/thumbnail/"):
            assert key.endswith(".webp") and head["ContentType"] == "image/webp"
            assert head["CacheControl"] == "public, max-age=31536000, immutable"
        else:
            assert key.startswith("assemblage/watermarked/") and key.endswith(".jpg")
            assert head["ContentType"] == "image/jpeg"

    rows = shard.rows(
        """SELECT i.id::text AS id, i.captured_at, i.original_url, i.thumbnail_url, i.preview_url, i.uploaded_at
           FROM images i JOIN processing_log p ON p.image_id = i.id WHERE p.shard = %s""",
        SHARD,
    )
    for row in rows:
        month = f"{row['captured_at']:%Y/%m}"  # the sample photos all carry an EXIF date
        assert row["original_url"] == f"s3://{private}/assemblage/original/{month}/{row['id']}.jpg"
        assert row["thumbnail_url"] == f"https://img.example.org/assemblage/thumbnail/{row['id']}.webp"
        assert row["preview_url"] == f"https://img.example.org/assemblage/watermarked/{row['id']}.jpg"
        assert row["uploaded_at"] is not None
    assert shard.statuses() == {"uploaded": PHOTOS}
    assert s3.proxy.counts()["PUT"] == 3 * PHOTOS


def test_rerun_of_a_published_shard_makes_zero_puts(s3: S3Env, shard: Shard) -> None:
    store = s3.store(s3.new_bucket())
    shard.publish(store)
    s3.proxy.reset()
    report = shard.publish(s3.store(store.bucket))
    counts = s3.proxy.counts()
    assert counts["PUT"] == 0 and counts["POST"] == 0
    assert counts["LIST"] <= 4  # thumbnail/, watermarked/ and the shard's original/yyyy/mm/ months
    assert report.counts["objects_skipped"] == 3 * PHOTOS and report.counts["objects_uploaded"] == 0
    assert report.counts["images_published"] == 0 and report.counts["images_verified"] == PHOTOS
    assert shard.statuses() == {"uploaded": PHOTOS}


def test_head_mode_checks_each_object_and_skip_check_overwrites(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    shard.publish(s3.store(bucket))
    s3.proxy.reset()
    shard.publish(s3.store(bucket, existence_check="head"))
    assert s3.proxy.counts() == {"HEAD": 3 * PHOTOS}

    # SKIP_R2_HEAD: images still 'processed' are uploaded without asking, as the older loader did
    s3.proxy.reset()
    shard.rows("UPDATE processing_log SET status = 'processed' WHERE shard = %s RETURNING 1", SHARD)
    report = shard.publish(s3.store(bucket, existence_check="none"))
    assert s3.proxy.counts() == {"PUT": 3 * PHOTOS}
    assert report.counts["images_published"] == PHOTOS and shard.statuses() == {"uploaded": PHOTOS}


def test_a_small_shard_in_a_crowded_bucket_is_not_checked_by_listing_everything(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    shard.publish(s3.store(bucket))
    # the catalogue says 50k thumbnails and previews from other shards are in the store
    with psycopg.connect(shard.dsn) as conn:
        conn.execute(
            """INSERT INTO images (id, content_hash, bytes, width, height, format, original_ext, original_key,
                                  uploaded_at)
               SELECT gen_random_uuid(), md5(g::text), 1, 1, 1, 'JPEG', 'jpg', 'original/2001/01/' || g || '.jpg',
                      now()
               FROM generate_series(1, 50000) g"""
        )
    s3.proxy.reset()
    report = shard.publish(s3.store(bucket))
    assert report.counts["objects_skipped"] == 3 * PHOTOS and s3.proxy.counts()["PUT"] == 0
    listed = [r.query for r in s3.proxy.seen if r.is_list]
    # 50 pages of thumbnail/ would dwarf one HEAD per object: no whole-directory listing
    assert not any("prefix=thumbnail%2F&" in q or "prefix=watermarked%2F&" in q for q in listed)
    assert s3.proxy.counts()["HEAD"] >= 2 * PHOTOS


def test_objects_deleted_from_the_bucket_are_put_back(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket)
    shard.publish(store)
    gone = sorted(s3.keys(bucket))[:2]
    for key in gone:
        s3.direct().delete_object(Bucket=bucket, Key=key)
    s3.proxy.reset()
    report = shard.publish(s3.store(bucket))
    assert report.counts["objects_uploaded"] == 2
    assert sorted(s3.proxy.stored_puts()) == sorted(f"/{bucket}/{k}" for k in gone)
    assert len(s3.keys(bucket)) == 3 * PHOTOS


def _injector(plan: dict[str, list[str]]):
    """Fault per request path: the listed actions are used up one per matching request."""

    def fault(seen: Seen) -> str | None:
        for needle, actions in plan.items():
            if needle in seen.path + "?" + seen.query and actions:
                return actions.pop(0)
        return None

    return fault


def test_transient_faults_still_end_with_every_object_stored_once(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket, concurrency=4)
    expected = shard.expected(store)
    keys = sorted(expected)
    plan = {"list-type=2": ["500"]}  # the first listing fails once
    for i, key in enumerate(keys):  # every object's first PUT fails: throttled, 500, or reset
        plan[f"/{bucket}/{key}"] = [("503", "500", "reset")[i % 3]] + (["503"] if i % 5 == 0 else [])
    s3.proxy.fault = _injector(plan)
    report = shard.publish(store)
    injected = [r for r in s3.proxy.seen if r.status in (0, 500, 503)]
    assert len(injected) >= len(keys) + 1
    assert report.counts["images_published"] == PHOTOS and report.counts["images_deferred"] == 0
    assert s3.proxy.stored_puts() == {f"/{bucket}/{k}": 1 for k in keys}
    assert _stored(s3, bucket) == {k: data for k, (_, data) in expected.items()}
    assert shard.statuses() == {"uploaded": PHOTOS}


def test_an_outage_longer_than_the_retries_defers_images_without_failing_them(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket, max_attempts=2, concurrency=2)
    victim = shard.rows("SELECT thumbnail_key FROM images ORDER BY id LIMIT 1")[0]["thumbnail_key"]
    s3.proxy.fault = _injector({victim: ["503"] * 10})
    report = shard.publish(store)
    assert report.counts["images_deferred"] == 1 and report.counts["images_published"] == PHOTOS - 1
    assert shard.statuses() == {"uploaded": PHOTOS - 1, "processed": 1}  # retried by the next run
    s3.proxy.fault = None
    assert shard.publish(s3.store(bucket)).counts["images_published"] == 1
    assert shard.statuses() == {"uploaded": PHOTOS}


_KILLABLE = """
import json, sys
from pathlib import Path
from assemblage_assets.core import db
from assemblage_assets.images.publish import publish_shard
from resources.object_store import S3ObjectStore
cfg = json.loads(sys.argv[1])
store = S3ObjectStore(**cfg["s3"], bucket=cfg["bucket"], concurrency=2)
with db.connect(cfg["dsn"]) as conn:
    publish_shard(conn, cfg["shard"], store=store, cache_dir=Path(cfg["cache"]), commit_every=1)
"""


def test_a_run_killed_mid_upload_resumes_without_duplicates_or_gaps(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket)
    expected = shard.expected(store)
    let_through = [7]

    def stall_after_seven_puts(seen: Seen) -> str | None:
        if seen.method != "PUT":
            return None
        let_through[0] -= 1
        return None if let_through[0] >= 0 else "stall"

    s3.proxy.fault = stall_after_seven_puts
    cfg = {
        "dsn": shard.dsn, "shard": SHARD, "cache": str(shard.cache), "bucket": bucket,
        "s3": {"endpoint_url": s3.url, "region_name": "us-east-1", "addressing_style": "path",
               "aws_access_key_id": "AKIATESTASSEMBLAGE01", "aws_secret_access_key": SECRET_KEY},
    }
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(cfg)], cwd=Path(__file__).parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert s3.proxy.stalled.acquire(timeout=60), "the upload never reached the stall"
        assert s3.proxy.stalled.acquire(timeout=10)  # both upload threads are now mid-request
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        s3.proxy.release.set()

    before = s3.keys(bucket)
    assert 0 < len(before) <= 7
    # what the catalogue calls uploaded is entirely in the bucket
    uploaded = shard.rows(
        """SELECT DISTINCT i.original_key, i.thumbnail_key, i.preview_key FROM images i
           JOIN processing_log p ON p.image_id = i.id WHERE p.status = 'uploaded'"""
    )
    for row in uploaded:
        assert {row["original_key"], row["thumbnail_key"], row["preview_key"]} <= set(before)

    s3.proxy.reset()
    report = shard.publish(s3.store(bucket))
    rerun_puts = s3.proxy.stored_puts()
    assert not {p.removeprefix(f"/{bucket}/") for p in rerun_puts} & set(before)  # nothing stored twice
    assert all(n == 1 for n in rerun_puts.values())
    assert report.counts["objects_uploaded"] == len(expected) - len(before)
    assert _stored(s3, bucket) == {k: data for k, (_, data) in expected.items()}  # nothing missing or extra
    assert shard.statuses() == {"uploaded": PHOTOS}


def test_a_missing_source_fails_that_image_and_the_shard_goes_on(s3: S3Env, shard: Shard) -> None:
    bucket = s3.new_bucket()
    victim = shard.rows(
        "SELECT local_path, image_id::text AS id FROM processing_log WHERE shard = %s ORDER BY local_path LIMIT 1", SHARD
    )[0]
    Path(victim["local_path"]).unlink()
    report = shard.publish(s3.store(bucket))
    assert report.counts["images_failed"] == 1 and report.counts["images_published"] == PHOTOS - 1
    (row,) = shard.rows("SELECT status, error_kind, error_message FROM processing_log WHERE local_path = %s",
                        victim["local_path"])
    assert row["status"] == "failed" and row["error_kind"] == "source-missing"
    assert victim["local_path"] in row["error_message"]
    assert report.failures[0][1] == "source-missing"
    assert shard.statuses() == {"uploaded": PHOTOS - 1, "failed": 1}


def test_missing_derivatives_send_the_image_back_to_derivation(shard: Shard, tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    (thumb,) = [p for p in (shard.cache / "thumbnail").iterdir()][:1]
    thumb.unlink()
    report = shard.publish(store)
    assert report.counts["images_requeued"] == 1
    assert shard.statuses() == {"uploaded": PHOTOS - 1, "pending": 1}
    with db.connect(shard.dsn) as conn:
        spec = ImageLibraryResource(images_dir=str(shard.images), derivative_cache_dir=str(shard.cache)).derivative_spec()
        derive_shard(conn, SHARD, cache_dir=shard.cache, spec=spec, workers=1)
    assert thumb.exists()
    assert shard.publish(store).counts["images_published"] == 1
    assert shard.statuses() == {"uploaded": PHOTOS}


def test_publish_to_the_local_store(shard: Shard, tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalObjectStore(root=str(root))
    report = shard.publish(store)
    assert report.counts["objects_uploaded"] == 3 * PHOTOS
    on_disk = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert on_disk == {k: data for k, (_, data) in shard.expected(store).items()}
    row = shard.rows("SELECT id::text AS id, original_key, thumbnail_url FROM images WHERE uploaded_at IS NOT NULL LIMIT 1")[0]
    assert row["thumbnail_url"] == (root / "thumbnail" / f"{row['id']}.webp").as_uri()
    again = shard.publish(LocalObjectStore(root=str(root)))
    assert again.counts["objects_uploaded"] == 0 and again.counts["objects_skipped"] == 3 * PHOTOS


def _materialize(shard: Shard, store: ObjectStore) -> dg.ExecuteInProcessResult:
    resources = {
        "database": PostgresResource(dsn=shard.dsn),
        "library": ImageLibraryResource(images_dir=str(shard.images), derivative_cache_dir=str(shard.cache)),
        "object_store": store,
    }
    # Entering the instance makes it the current one for Dagster's definition loading, whatever
    # another test may have left behind.
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, [SHARD])
        return dg.materialize([r2_objects], partition_key=SHARD, instance=instance, resources=resources,
                              raise_on_error=False)


def test_asset_materializes_with_counts_throughput_and_requests(s3: S3Env, shard: Shard) -> None:
    result = _materialize(shard, s3.store(s3.new_bucket()))
    assert result.success
    meta = result.asset_materializations_for_node("r2_objects")[0].metadata
    assert meta["objects_uploaded"].value == 3 * PHOTOS and meta["images_published"].value == PHOTOS
    assert meta["objects_skipped"].value == 0 and meta["bytes"].value > 0
    assert meta["objects_uploaded_per_second"].value > 0
    assert meta["requests"].value["PutObject"] == 3 * PHOTOS
    assert meta["failures"].value == "No failures."
    assert meta["status_counts"].value["uploaded"] == PHOTOS
    # the secret never reaches the event log
    assert SECRET_KEY not in json.dumps([str(e) for e in result.all_events])


def test_asset_with_bad_credentials_fails_once_before_any_work(s3: S3Env, shard: Shard) -> None:
    store = s3.store(s3.new_bucket(), aws_access_key_id="AKIANOTAKNOWNKEY0001", aws_secret_access_key="bad-secret-zz")
    set_moto_auth(s3.upstream_url, enabled=True)
    try:
        result = _materialize(shard, store)
    finally:
        set_moto_auth(s3.upstream_url, enabled=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message
    assert "object store not usable" in message and "R2_ACCESS_KEY_ID" in message
    assert "bad-secret-zz" not in json.dumps([str(e) for e in result.all_events])
    # no retries for a configuration error, no upload, no status change
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 0
    assert s3.proxy.counts()["PUT"] == 0
    assert shard.statuses() == {"processed": PHOTOS}


def test_upload_cli_publishes_to_the_configured_bucket(s3: S3Env, shard: Shard, assemblage_env: dict[str, str]) -> None:
    bucket = s3.new_bucket()
    env = {
        **os.environ, **assemblage_env, "IMAGES_DIR": str(shard.images),
        "R2_BUCKET": bucket, "S3_ENDPOINT_URL": s3.url, "S3_REGION": "us-east-1",
        "R2_ACCESS_KEY_ID": "AKIATESTASSEMBLAGE01", "R2_SECRET_ACCESS_KEY": SECRET_KEY,
        "DATABASE_URL": shard.dsn,
    }
    # the shard was derived into shard.cache: point the library's cache there
    Path(assemblage_env["ASSEMBLAGE_HOME"], "derivatives").symlink_to(shard.cache)
    cli = [str(Path(sys.executable).parent / "assemblage"), "upload", "--shard", SHARD]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"publishing to s3://{bucket}" in proc.stdout and "1/1 shard run(s) succeeded" in proc.stdout
    assert len(s3.keys(bucket)) == 3 * PHOTOS
    assert shard.statuses() == {"uploaded": PHOTOS}
    assert SECRET_KEY not in proc.stdout + proc.stderr

    bad = subprocess.run(cli, env={**env, "R2_BUCKET": "missing-bucket"}, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "missing-bucket" in bad.stderr and "R2_BUCKET" in bad.stderr and "Traceback" not in bad.stderr


def test_definitions_publish_in_the_ingest_job_and_pick_the_store_from_env(
    assemblage_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from assemblage_assets import definitions
    from resources.object_store import S3ObjectStore

    def build() -> dg.Definitions:
        return dg.Definitions.merge(definitions.images_defs(), dg.Definitions(resources=definitions.build_resources()))

    for name in ("R2_BUCKET", "S3_BUCKET", "OBJECT_STORE_DIR"):
        monkeypatch.delenv(name, raising=False)
    defs = build()
    with dg.instance_for_test():  # a current instance for definition loading (see _materialize)
        dg.Definitions.validate_loadable(defs)
    for job, expected in (("ingest_shard_job", {"raw_files", "derivatives", "r2_objects"}),
                          ("publish_shard_job", {"r2_objects"})):
        keys = defs.resolve_job_def(job).asset_layer.executable_asset_keys
        assert {k.to_user_string() for k in keys} == expected
    store = definitions.build_resources()["object_store"]
    assert isinstance(store, LocalObjectStore)
    assert store.root == str(Path(assemblage_env["ASSEMBLAGE_HOME"]) / "objects")

    monkeypatch.setenv("R2_BUCKET", "photos")
    monkeypatch.setenv("R2_ACCOUNT_ID", "abc123")
    monkeypatch.setenv("R2_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", SECRET_KEY)
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(build())
    assert isinstance(definitions.build_resources()["object_store"], S3ObjectStore)


def _check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_asset_checks_report_unpublished_images_and_objects_missing_from_the_store(shard: Shard, tmp_path: Path) -> None:
    from assemblage_assets.images.checks import object_gaps, spot_check_objects

    root = tmp_path / "objects"
    store = LocalObjectStore(root=str(root))
    with db.connect(shard.dsn) as conn:
        before = object_gaps(conn, SHARD)
    assert (before.images, before.unpublished, before.gaps) == (PHOTOS, PHOTOS, PHOTOS)

    result = _materialize(shard, store)
    assert result.success
    checks = _check_evaluations(result)
    assert checks["objects_published"].passed and checks["objects_published"].metadata["unpublished"].value == 0
    assert checks["objects_in_store"].passed
    assert checks["objects_in_store"].metadata["images_checked"].value == PHOTOS

    # An object deleted behind the catalogue's back: the spot check names it.
    row = shard.rows("SELECT id::text AS id FROM images WHERE uploaded_at IS NOT NULL ORDER BY id LIMIT 1")[0]
    lost = root / "thumbnail" / f"{row['id']}.webp"
    lost.unlink()
    with db.connect(shard.dsn) as conn:
        spot = spot_check_objects(conn, SHARD, store, sample=PHOTOS)
        assert object_gaps(conn, SHARD).gaps == 0  # the catalogue alone cannot see it
    assert spot.checked == PHOTOS and spot.missing == [f"thumbnail/{row['id']}.webp"]

    # Nothing changed since the last full check: the rerun skips the listing, the sample finds
    # the gap and unsettles the shard, so the next run checks everything and puts it back. A
    # rerun without the existence check (SKIP_R2_HEAD) leaves the gap, and the check fails.
    result = _materialize(shard, store)
    assert result.success and not lost.exists()
    assert not _check_evaluations(result)["objects_in_store"].passed
    result = _materialize(shard, store)
    assert result.success and lost.exists()
    assert _check_evaluations(result)["objects_in_store"].passed
    lost.unlink()
    result = _materialize(shard, LocalObjectStore(root=str(root), existence_check="none"))
    checks = _check_evaluations(result)
    assert not lost.exists() and not checks["objects_in_store"].passed
    assert checks["objects_in_store"].metadata["missing_keys"].value == [f"thumbnail/{row['id']}.webp"]

"""A bucket as an image source (issue 11) against moto's server on 127.0.0.1 behind the counting
proxy: listing across several pages, a rerun that makes no GET, a changed object re-probed,
originals published by server-side copy, staging empty afterwards, per-entry faults, and a
wrong credential or bucket failing the run at once naming the setting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row
from support.s3_loopback import ACCESS_KEY, SECRET_KEY, S3Env, Seen, set_moto_auth

from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images import staging
from assemblage_assets.images.assets import derivatives, r2_objects, raw_files
from assemblage_assets.images.remote_scan import StagingLimits, scan_remote_shard
from assemblage_assets.images.shards import shard_key
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource
from resources.image_source import S3Source, SourceShard

SHARD = "Ferien Sommer 2023"  # a hashed key: resolving it needs the source's listing
PHOTOS = 7


def jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    make_photo(*size, seed).save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture
def s3() -> S3Env:
    return S3Env.shared()


@pytest.fixture
def source_env(s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"SOURCE_S3_ENDPOINT_URL": s3.url, "SOURCE_S3_REGION": "us-east-1",
           "SOURCE_S3_ACCESS_KEY_ID": ACCESS_KEY, "SOURCE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
           "SOURCE_S3_PAGE_SIZE": "3"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _fill(s3: S3Env, bucket: str) -> dict[str, bytes]:
    objects = {f"uploads/{SHARD}/day{i % 2}/p{i}.jpg": jpeg(i) for i in range(PHOTOS)}
    objects[f"uploads/{SHARD}/notes.txt"] = b"not a photo"
    objects[f"uploads/{SHARD}/fake.jpg"] = b"plain text named like a photo"
    objects["uploads/elsewhere/q.jpg"] = jpeg(99)  # another shard: never touched
    client = s3.direct()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return objects


def _rows(dsn: str, sql: str, *params: object) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def _ingest(dsn: str, library: ImageLibraryResource, store, key: str) -> dg.ExecuteInProcessResult:
    resources = {"database": PostgresResource(dsn=dsn), "library": library, "object_store": store}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, [key])
        return dg.materialize([raw_files, derivatives, r2_objects], partition_key=key, instance=instance,
                              resources=resources, raise_on_error=False)


def _gets(s3: S3Env, bucket: str) -> list[Seen]:
    """Object GETs on the source bucket (not listings)."""
    return [s for s in s3.proxy.seen if s.method == "GET" and not s.is_list and s.path.startswith(f"/{bucket}/")]


def test_bucket_shard_end_to_end_rerun_change_and_server_side_copy(
    s3: S3Env, source_env: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    source_bucket, store_bucket = s3.new_bucket("src"), s3.new_bucket("dst")
    objects = _fill(s3, source_bucket)
    library = ImageLibraryResource(
        images_dir=str(tmp_path / "unused"), derivative_cache_dir=str(tmp_path / "cache"),
        image_sources=f"s3://{source_bucket}/uploads", staging_dir=str(tmp_path / "staging"),
    )
    store = s3.store(store_bucket)
    key = shard_key(SHARD)

    result = _ingest(pg_dsn, library, store, key)
    assert result.success, [e.event_specific_data.error.message for e in result.all_events if e.is_step_failure]
    scan = result.asset_materializations_for_node("raw_files")[0].metadata
    assert scan["seen"].value == PHOTOS + 2 and scan["pending"].value == PHOTOS
    assert scan["rejected"].value == 1 and scan["failed"].value == 1
    # listing pages of 3 keys: the shard's 9 keys took several ListObjectsV2 continuation pages
    shard_lists = [s for s in s3.proxy.seen if s.is_list and "continuation-token" in s.query]
    assert len(shard_lists) >= 2
    # the text file was never downloaded; each candidate exactly once
    got = sorted(s.path for s in _gets(s3, source_bucket))
    assert got == sorted(f"/{source_bucket}/{k}" for k in objects if SHARD in k and not k.endswith(".txt"))

    rows = _rows(pg_dsn, "SELECT local_path, status, error_kind, source_marker FROM processing_log ORDER BY 1")
    by_path = {r["local_path"]: r for r in rows}
    assert {r["status"] for r in rows if r["local_path"].endswith(".jpg") and "fake" not in r["local_path"]} == {"uploaded"}
    assert by_path[f"s3://{source_bucket}/uploads/{SHARD}/fake.jpg"]["error_kind"] == "not-an-image"
    assert all(r["local_path"].startswith(f"s3://{source_bucket}/uploads/{SHARD}/") for r in rows)

    # originals: server-side copies (same endpoint, same key), no PUT of their bytes; derivatives uploaded
    copies = [s for s in s3.proxy.seen if s.method == "PUT" and "x-amz-copy-source" in {k.lower() for k in s.headers}]
    assert len(copies) == PHOTOS
    # each copy is conditional on the version scanned (its listed ETag)
    listed = {s3.direct().head_object(Bucket=source_bucket, Key=k)["ETag"]
              for k in objects if SHARD in k and k.endswith(".jpg") and "fake" not in k}
    conditions = [{k.lower(): v for k, v in s.headers.items()}.get("x-amz-copy-source-if-match") for s in copies]
    assert sorted(conditions) == sorted(listed)
    stored = s3.keys(store_bucket)
    originals = [k for k in stored if k.startswith("original/")]
    assert len(originals) == PHOTOS and len(stored) == 3 * PHOTOS
    client = s3.direct()
    copied = {client.get_object(Bucket=store_bucket, Key=k)["Body"].read() for k in originals}
    assert copied == {data for k, data in objects.items() if SHARD in k and k.endswith(".jpg") and "fake" not in k}
    assert staging.is_empty(tmp_path / "staging")

    # a rerun lists but downloads nothing
    s3.proxy.reset()
    again = _ingest(pg_dsn, library, store, key)
    assert again.success
    meta = again.asset_materializations_for_node("raw_files")[0].metadata
    assert meta["unchanged"].value == PHOTOS + 2 and _gets(s3, source_bucket) == []

    # one object changes: only it is fetched and probed again, as a new image
    changed = f"uploads/{SHARD}/day0/p0.jpg"
    client.put_object(Bucket=source_bucket, Key=changed, Body=jpeg(1234))
    s3.proxy.reset()
    third = _ingest(pg_dsn, library, store, key)
    meta = third.asset_materializations_for_node("raw_files")[0].metadata
    assert meta["changed"].value == 1 and meta["unchanged"].value == PHOTOS + 1
    assert [s.path for s in _gets(s3, source_bucket)] == [f"/{source_bucket}/{changed}"]
    assert _rows(pg_dsn, "SELECT count(*) AS n FROM images")[0]["n"] == PHOTOS + 1
    assert staging.is_empty(tmp_path / "staging")
    assert SECRET_KEY not in json.dumps([str(e) for e in result.all_events + third.all_events])


def _limits(tmp_path: Path, **kw) -> StagingLimits:
    return StagingLimits(**{"root": tmp_path / "staging", "budget_bytes": 10 * 2**20, "max_file_bytes": 2**20,
                            "retry_delay": 0.01, **kw})


def test_per_entry_faults_are_recorded_and_the_shard_completes(
    s3: S3Env, source_env: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    bucket = s3.new_bucket("faults")
    client = s3.direct()
    good = {f"up/a/ok{i}.jpg": jpeg(i) for i in range(3)}
    for k, data in {**good, "up/a/gone.jpg": jpeg(50), "up/a/slow.jpg": jpeg(51),
                    "up/a/big.jpg": jpeg(52, (900, 900)), "up/a/empty.jpg": b"", "up/a/locked.jpg": jpeg(53)}.items():
        client.put_object(Bucket=bucket, Key=k, Body=data)
    throttled: list[str] = []

    def fault(seen: Seen) -> str | None:
        if seen.method == "GET" and seen.path.endswith("gone.jpg"):
            client.delete_object(Bucket=bucket, Key="up/a/gone.jpg")  # deleted after it was listed
        if seen.method == "GET" and seen.path.endswith("slow.jpg") and len(throttled) < 2:
            throttled.append(seen.path)
            return "503"  # SlowDown
        if seen.method == "GET" and seen.path.endswith("locked.jpg"):
            return "403"  # this one object is forbidden
        return None

    s3.proxy.fault = fault
    source = S3Source.from_uri(f"s3://{bucket}/up")
    with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
        report = scan_remote_shard(conn, source, "a", SourceShard(source.uri, "a"),
                                   limits=_limits(tmp_path, max_file_bytes=20_000), max_pixels=10**8)
        rows = {r["local_path"].rsplit("/", 1)[-1]: r for r in conn.execute(
            "SELECT local_path, status, error_kind, source_marker FROM processing_log")}
    assert report.counts["pending"] == 4  # three ok + the throttled one
    assert rows["slow.jpg"]["status"] == "pending" and len(throttled) == 2
    assert rows["gone.jpg"]["error_kind"] == "source-missing" and rows["gone.jpg"]["source_marker"] is None
    assert rows["big.jpg"]["error_kind"] == "too-large"
    assert rows["empty.jpg"]["error_kind"] == "empty"
    assert rows["locked.jpg"]["error_kind"] == "forbidden" and rows["locked.jpg"]["source_marker"] is None
    # neither the oversized nor the empty object was downloaded
    assert not [s for s in s3.proxy.seen if s.method == "GET" and s.path.endswith(("big.jpg", "empty.jpg"))]
    # only the candidates are staged, waiting for derivatives
    assert len(list((tmp_path / "staging").rglob("*.jpg"))) == 4


def test_a_staging_budget_defers_what_does_not_fit(s3: S3Env, source_env: dict[str, str], pg_dsn: str, tmp_path: Path) -> None:
    bucket = s3.new_bucket("budget")
    photos = {f"p/x/{i}.jpg": jpeg(i) for i in range(4)}
    for k, data in photos.items():
        s3.direct().put_object(Bucket=bucket, Key=k, Body=data)
    budget = sum(sorted(map(len, photos.values()))[:2])  # room for about two
    source = S3Source.from_uri(f"s3://{bucket}/p")
    with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
        first = scan_remote_shard(conn, source, "x", SourceShard(source.uri, "x"),
                                  limits=_limits(tmp_path, budget_bytes=budget), max_pixels=10**8)
        assert first.counts["deferred"] >= 2 and first.counts["pending"] + first.counts["deferred"] == 4
        assert staging.used_bytes(tmp_path / "staging") <= budget
        # room again (as after publishing): the deferred ones come in as new, the staged ones are unchanged
        second = scan_remote_shard(conn, source, "x", SourceShard(source.uri, "x"),
                                   limits=_limits(tmp_path), max_pixels=10**8)
        assert second.counts["unchanged"] == first.counts["pending"] and second.counts["new"] == first.counts["deferred"]
        # a staged copy lost before derivation (wiped staging folder) is downloaded again
        staging.release(tmp_path / "staging", [f"s3://{bucket}/{k}" for k in photos])
        third = scan_remote_shard(conn, source, "x", SourceShard(source.uri, "x"),
                                  limits=_limits(tmp_path), max_pixels=10**8)
    assert third.counts["unchanged"] == 0 and third.counts["downloaded"] == 4


def test_wrong_credentials_or_bucket_fail_the_run_at_once_naming_the_setting(
    s3: S3Env, source_env: dict[str, str], pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.new_bucket("auth")
    s3.direct().put_object(Bucket=bucket, Key="u/a/p.jpg", Body=jpeg(1))
    library = ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                   image_sources="s3://no-such-bucket-zz/u")
    result = _ingest(pg_dsn, library, s3.store(bucket), "a")
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message
    assert "bucket does not exist" in message and "IMAGE_SOURCES" in message

    monkeypatch.setenv("SOURCE_S3_ACCESS_KEY_ID", "AKIANOTAKNOWNKEY0001")
    monkeypatch.setenv("SOURCE_S3_SECRET_ACCESS_KEY", "bad-secret-zz")
    set_moto_auth(s3.upstream_url, enabled=True)
    try:
        library = ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                       image_sources=f"s3://{bucket}/u")
        result = _ingest(pg_dsn, library, s3.store(bucket), "a")
    finally:
        set_moto_auth(s3.upstream_url, enabled=False)
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message
    assert "SOURCE_S3_ACCESS_KEY_ID" in message
    assert "bad-secret-zz" not in json.dumps([str(e) for e in result.all_events])
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert _rows(pg_dsn, "SELECT count(*) AS n FROM processing_log")[0]["n"] == 0


def test_a_source_object_changed_before_publishing_is_never_stored_as_the_original(
    s3: S3Env, source_env: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    from assemblage_assets.core.imaging import DerivativeSpec
    from assemblage_assets.images.derive import derive_shard
    from assemblage_assets.images.publish import publish_shard
    from assemblage_assets.images.sources import server_side_copies

    source_bucket, store_bucket = s3.new_bucket("chg"), s3.new_bucket("chgdst")
    client = s3.direct()
    scanned = jpeg(7)
    client.put_object(Bucket=source_bucket, Key="in/a/p.jpg", Body=scanned)
    scanned_etag = client.head_object(Bucket=source_bucket, Key="in/a/p.jpg")["ETag"]
    source, store = S3Source.from_uri(f"s3://{source_bucket}/in"), s3.store(store_bucket)
    root = tmp_path / "staging"
    with psycopg.connect(pg_dsn, row_factory=dict_row, autocommit=True) as conn:
        scan_remote_shard(conn, source, "a", SourceShard(source.uri, "a"), limits=_limits(tmp_path), max_pixels=10**8)
        derive_shard(conn, "a", cache_dir=tmp_path / "cache", spec=DerivativeSpec(), workers=1, staging_dir=root)
        client.put_object(Bucket=source_bucket, Key="in/a/p.jpg", Body=jpeg(8))  # changed after the scan
        s3.proxy.reset()
        report = publish_shard(conn, "a", store=store, cache_dir=tmp_path / "cache", staging_dir=root,
                               copy_from=server_side_copies([source], store))
        staging.release_settled(conn, "a", root)
        (original,) = [k for k in s3.keys(store_bucket) if k.startswith("original/")]
    # the copy's server-side SHA-256 did not match the catalogued hash: the staged bytes were uploaded instead
    assert report.counts["images_published"] == 1
    assert client.get_object(Bucket=store_bucket, Key=original)["Body"].read() == scanned
    (copy,) = [{k.lower(): v for k, v in s.headers.items()} for s in s3.proxy.seen
               if "x-amz-copy-source" in {k.lower() for k in s.headers}]
    # R2 and S3 refuse it with 412 (moto ignores the condition, so the SHA-256 check caught it here)
    assert copy["x-amz-copy-source-if-match"] == scanned_etag
    assert staging.is_empty(root)

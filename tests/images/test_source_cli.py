"""``assemblage ingest --source``, ``assemblage process SOURCE_URI`` and the uploads sensor with a
bucket source on moto's server (127.0.0.1), publishing to the local object store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from support.s3_loopback import ACCESS_KEY, SECRET_KEY, S3Env

from assemblage_assets.core import settings
from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images.uploads_sensor import uploads_sensor
from resources.image_library import ImageLibraryResource

CLI = str(Path(sys.executable).parent / "assemblage")


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    make_photo(64, 48, seed).save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture
def s3() -> S3Env:
    return S3Env.shared()


def _env(s3: S3Env, assemblage_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {**os.environ, **assemblage_env, "SOURCE_S3_ENDPOINT_URL": s3.url, "SOURCE_S3_REGION": "us-east-1",
           "SOURCE_S3_ACCESS_KEY_ID": ACCESS_KEY, "SOURCE_S3_SECRET_ACCESS_KEY": SECRET_KEY, **extra}
    for name in ("R2_BUCKET", "S3_BUCKET", "IMAGE_SOURCES"):
        env.pop(name, None)
    return {**env, **extra}


def _statuses(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT local_path, status FROM processing_log").fetchall())


def test_ingest_a_bucket_source_then_process_one_new_entry(s3: S3Env, assemblage_env: dict[str, str]) -> None:
    bucket = s3.new_bucket("cli")
    client = s3.direct()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"in/user-{i % 2}/p{i}.jpg", Body=jpeg(i))
    env = _env(s3, assemblage_env)
    proc = subprocess.run([CLI, "ingest", "--source", f"s3://{bucket}/in"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 shard run(s) succeeded" in proc.stdout
    assert set(_statuses(assemblage_env["DATABASE_URL"]).values()) == {"uploaded"}
    assert SECRET_KEY not in proc.stdout + proc.stderr

    # upload and verify-objects take bucket shard keys too: a thumbnail deleted from the store comes back
    thumbs = sorted((settings.Paths.from_env().object_store / "thumbnail").rglob("*.webp"))
    assert len(thumbs) == 3
    thumbs[0].unlink()
    proc = subprocess.run([CLI, "verify-objects", "--source", f"s3://{bucket}/in"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 shard run(s) succeeded" in proc.stdout and thumbs[0].is_file()
    proc = subprocess.run([CLI, "upload", "--source", f"s3://{bucket}/in"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    new = f"s3://{bucket}/in/user-1/fresh.jpg"
    client.put_object(Bucket=bucket, Key="in/user-1/fresh.jpg", Body=jpeg(9))
    client.put_object(Bucket=bucket, Key="in/user-1/not-yet.jpg", Body=jpeg(10))
    s3.proxy.reset()
    proc = subprocess.run([CLI, "process", new], env={**env, "IMAGE_SOURCES": f"s3://{bucket}/in"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = _statuses(assemblage_env["DATABASE_URL"])
    assert statuses[new] == "uploaded" and f"s3://{bucket}/in/user-1/not-yet.jpg" not in statuses
    gets = [s.path for s in s3.proxy.seen if s.method == "GET" and not s.is_list and s.path.startswith(f"/{bucket}/")]
    assert gets == [f"/{bucket}/in/user-1/fresh.jpg"]

    bad = subprocess.run([CLI, "ingest", "--source", "s3://no-such-bucket-cli/in"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0
    assert "IMAGE_SOURCES" in bad.stderr and "Traceback" not in bad.stderr


def test_uploads_sensor_requests_runs_for_shards_with_new_entries(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.new_bucket("uploads")
    client = s3.direct()
    client.put_object(Bucket=bucket, Key="u/alice/a.jpg", Body=jpeg(1))
    client.put_object(Bucket=bucket, Key="u/bob/b.jpg", Body=jpeg(2))
    for key, value in _env(s3, {}, UPLOADS_SOURCE=f"s3://{bucket}/u").items():
        if key.startswith(("SOURCE_S3_", "UPLOADS_")):
            monkeypatch.setenv(key, value)
    library = ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                   image_sources=f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources={"library": library}) as context:
        first = uploads_sensor(context)
    assert sorted(r.partition_key for r in first.run_requests) == ["alice", "bob"]
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == ["alice", "bob"]
    instance.add_dynamic_partitions("image_shards", ["alice", "bob"])

    client.put_object(Bucket=bucket, Key="u/bob/later.jpg", Body=jpeg(3))
    with dg.build_sensor_context(instance=instance, resources={"library": library}, cursor=first.cursor) as context:
        second = uploads_sensor(context)
    keys = {r.partition_key: r.run_key for r in second.run_requests}
    first_keys = {r.partition_key: r.run_key for r in first.run_requests}
    # bob has a newer entry: a new run key; alice's request (inside the overlap window) repeats
    # its old run key, which Dagster never launches twice
    assert keys["bob"] != first_keys["bob"] and keys.get("alice", first_keys["alice"]) == first_keys["alice"]
    assert not second.dynamic_partitions_requests
    assert json.loads(second.cursor)["since"] >= json.loads(first.cursor)["since"]


def test_two_uploads_in_the_same_second_get_two_run_keys() -> None:
    """S3 modification times have a 1 s resolution: the run key must not rest on the time alone."""
    from assemblage_assets.images.sources import ShardRef
    from assemblage_assets.images.uploads_feed import ShardUploads
    from resources.image_source import S3Source, SourceEntry

    def _fingerprint(entries: list[SourceEntry]) -> str:
        shard = ShardUploads(ShardRef("bob", S3Source(bucket="b", prefix="u/")))
        for e in entries:
            shard.add(e.uri, e.marker, e.modified)
        return shard.fingerprint

    first = [SourceEntry("s3://b/u/bob/b.jpg", 10, '"e1"', 1796173431.0)]
    both = first + [SourceEntry("s3://b/u/bob/later.jpg", 12, '"e2"', 1796173431.0)]
    assert _fingerprint(first) != _fingerprint(both)
    assert _fingerprint(both) == _fingerprint(list(reversed(both)))  # listing order does not matter
    changed = [SourceEntry("s3://b/u/bob/b.jpg", 10, '"e3"', 1796173431.0)]  # same key, new bytes
    assert _fingerprint(first) != _fingerprint(changed)

"""The operator's trial (issue 14): ``ingest; embed`` of a small tree killed with SIGKILL again
and again (while scanning, deriving, uploading to the loopback S3 or buying vectors from the
loopback Replicate), then run to the end and run once more. The catalogue and the bucket must
come out exact: one log row per file, one image per content, three objects per image and no
stray key, no temp file left, one vector per image, every image bought once with the cost log
equal to the stand-in's bill, and a rerun with 0 PUTs and 0 paid calls."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.chaos import finish, kill_when
from support.embed_support import FakeReplicate, query, write_tree
from support.s3_loopback import SECRET_KEY, S3Env

PIPELINE_CHILD = """
import json, sys
from pathlib import Path
from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from resources.embedding import ReplicateEmbedding
from resources.object_store import S3ObjectStore

cfg = json.loads(sys.argv[1])
store = S3ObjectStore(**cfg["s3"], bucket=cfg["bucket"], concurrency=2)
provider = ReplicateEmbedding(**cfg["replicate"])
cache = Path(cfg["cache"])
with db.connect(cfg["dsn"]) as conn:
    for shard in discover_shards(Path(cfg["images"])):
        scan_shard(conn, shard, max_pixels=120_000_000)
        derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)
        publish_shard(conn, shard.key, store=store, cache_dir=cache, commit_every=1)
        report = embed_shard(conn, shard.key, provider, dsn=cfg["dsn"], cache_dir=cache, run_id=cfg["run_id"])
print(json.dumps({"counts": dict(report.counts), "paid_calls": report.paid_calls}))
"""

FILES = 16  # 14 distinct photos, one byte-identical copy, one corrupt file
DISTINCT = 14


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    colours = ["orange", "blue", "green", "white"]
    images = write_tree(tmp_path / "images", {"trip": [colours[i % 4] for i in range(DISTINCT)]})
    shutil.copy(images / "trip" / "orange-0.jpg", images / "trip" / "copy-of-orange-0.jpg")
    (images / "trip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert len(list((images / "trip").iterdir())) == FILES
    return images


def test_ingest_and_embed_killed_again_and_again_end_exact(pg_dsn: str, tree: Path, tmp_path: Path) -> None:
    s3 = S3Env.shared()
    bucket = s3.new_bucket("chaos")
    cache = tmp_path / "cache"
    rng = random.Random(2014)
    with FakeReplicate(complete_after=0.3) as fake:
        def start(run_id: str) -> subprocess.Popen[str]:
            cfg = {
                "dsn": pg_dsn, "images": str(tree), "cache": str(cache), "bucket": bucket, "run_id": run_id,
                "s3": {"endpoint_url": s3.url, "region_name": "us-east-1", "addressing_style": "path",
                       "aws_access_key_id": "AKIATESTASSEMBLAGE01", "aws_secret_access_key": SECRET_KEY},
                "replicate": {"api_token": "r8_test", "base_url": fake.url, "max_calls_per_min": 0,
                              "concurrency": 4, "timeout_seconds": 20.0, "retry_base_seconds": 0.02},
            }
            return subprocess.Popen([sys.executable, "-c", PIPELINE_CHILD, json.dumps(cfg)], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={**os.environ, "REPLICATE_POLL_INTERVAL": "0.05"})

        def work() -> int:  # what the stand-ins have seen: object PUTs and predictions
            return sum(s3.proxy.stored_puts().values()) + fake.created

        kills = []
        for i in range(6):  # bounded: six kills at most, each within 60 s
            started, target = time.monotonic(), work() + rng.randint(2, 9)
            early = rng.uniform(1.0, 6.0) if i < 2 else None  # the first two may land while scanning/deriving
            proc = start(f"killed-{i}")
            def due(target: int = target, early: float | None = early, started: float = started) -> bool:
                return work() >= target or (early is not None and time.monotonic() - started > early)

            if kill_when(proc, due):
                kills.append(work())
            else:
                finish(proc)
                break
        finish(start("final"))
        puts_before_rerun = sum(s3.proxy.stored_puts().values())
        billed = fake.created
        s3.proxy.reset()
        rerun = finish(start("rerun"))
        rerun_puts = sum(s3.proxy.stored_puts().values())
        rerun_creates = fake.created - billed

    print(f"\npipeline kills at work counts {kills}; {puts_before_rerun} PUTs, {billed} predictions for "
          f"{DISTINCT} images; rerun: {rerun_puts} PUTs, {rerun_creates} predictions")
    assert len(kills) >= 3
    log = query(pg_dsn, "SELECT local_path, status, image_id FROM processing_log")
    assert len(log) == FILES  # one row per file
    assert sum(1 for r in log if r["status"] == "failed") == 1  # the corrupt file, recorded
    images = query(pg_dsn, "SELECT id::text AS id, original_key, thumbnail_key, preview_key FROM images")
    assert len(images) == DISTINCT  # one image per content (the copy shares its image)
    expected_keys = {k for i in images for k in (i["original_key"], i["thumbnail_key"], i["preview_key"])}
    assert len(expected_keys) == 3 * DISTINCT and set(s3.keys(bucket)) == expected_keys  # no stray key
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # no temp file left
    vectors = query(pg_dsn, "SELECT image_id, count(*) AS n FROM image_embeddings GROUP BY image_id")
    assert len(vectors) == DISTINCT and all(v["n"] == 1 for v in vectors)
    assert billed == DISTINCT  # every image bought once
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == billed
    assert rerun_puts == 0 and rerun_creates == 0 and rerun["paid_calls"] == 0

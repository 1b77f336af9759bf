"""``missing_captions_sensor`` against a real Dagster instance and the embedded Postgres: runs for
exactly the shards whose published images lack a caption of the active caption model (real
captions from the tiny random BLIP the tests build), none while a run is in flight or nothing is
missing, run keys that repeat for a state already requested, retries that fell due, a changed
caption model, CAPTION_PROVIDER=none, and the sensor registered in the definitions."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dagster as dg
import pytest
from support.embed_support import image_ids, ingest, write_tree

from assemblage_assets.core import db
from assemblage_assets.dev.tiny_blip import TINY_BLIP_NAME, build_blip_checkpoint
from assemblage_assets.embeddings import caption_queue
from assemblage_assets.embeddings.captions import caption_shard
from assemblage_assets.embeddings.sensors import evaluate_captions, missing_captions_sensor
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.caption import BlipCaptions
from resources.database import PostgresResource
from resources.object_store import LocalObjectStore


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blip_checkpoint(tmp_path_factory.mktemp("models") / TINY_BLIP_NAME)


@pytest.fixture
def setup(tmp_path: Path, pg_dsn: str, tiny_blip: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CAPTION_PROVIDER", "blip")
    monkeypatch.setenv("BLIP_MODEL", str(tiny_blip))  # what the sensor reads the active caption model from
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue"], "parks": ["green"], "mixed": ["white"]})
    cache = tmp_path / "cache"
    shards = ingest(pg_dsn, images, cache)
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    with db.connect(pg_dsn) as conn:
        for shard in ("cars", "parks"):  # "mixed" stays processed: not published, not requested
            publish_shard(conn, shard, store=store, cache_dir=cache)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, shards)
        yield instance, cache, BlipCaptions(blip_model=str(tiny_blip), batch_size=2, num_beams=1, max_new_tokens=8)


def _tick(instance: dg.DagsterInstance, dsn: str, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"database": PostgresResource(dsn=dsn)}) as context:
        return missing_captions_sensor(context)


def _busy_run(instance: dg.DagsterInstance, shard: str) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="caption_shard_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                   tags={"dagster/partition": shard}))
    return run_id


def _caption(dsn: str, shard: str, provider: BlipCaptions, cache: Path) -> int:
    with db.connect(dsn) as conn:
        return caption_shard(conn, shard, provider, dsn=dsn, cache_dir=cache).counts["captioned"]


def test_sensor_requests_captions_runs_for_published_shards_missing_captions(setup, pg_dsn: str) -> None:
    instance, cache, blip = setup
    assert _caption(pg_dsn, "cars", blip, cache) == 2  # real (random-word) captions of the tiny BLIP
    result = _tick(instance, pg_dsn, None)
    assert [r.partition_key for r in result.run_requests] == ["parks"]  # cars captioned, mixed not published
    (request,) = result.run_requests
    assert request.tags["assemblage/trigger"] == "missing_captions_sensor"
    assert request.tags["assemblage/model"] == TINY_BLIP_NAME
    assert request.run_key.startswith("captions:parks:") and ":1:" in request.run_key  # one image missing
    cursor = json.loads(result.cursor)
    assert cursor["model"] == TINY_BLIP_NAME and cursor["backlog"] == []

    # the same state on the next tick: the same run key, so Dagster starts no second run for it
    again = _tick(instance, pg_dsn, result.cursor)
    assert [r.run_key for r in again.run_requests] == [request.run_key]

    # while its run is in flight the shard is not requested, but kept in the backlog
    busy = _busy_run(instance, "parks")
    waiting = _tick(instance, pg_dsn, again.cursor)
    assert not waiting.run_requests and json.loads(waiting.cursor)["backlog"] == ["parks"]
    assert "1 already queued or running" in waiting.skip_reason.skip_message

    # the run captions the shard: nothing is missing any more, nothing is requested
    assert _caption(pg_dsn, "parks", blip, cache) == 1
    instance.delete_run(busy)
    done = _tick(instance, pg_dsn, waiting.cursor)
    assert not done.run_requests and "0 shard(s)" in done.skip_reason.skip_message
    assert json.loads(done.cursor)["backlog"] == []

    # another caption model: a full scan, every published shard wants captions of it
    with db.connect(pg_dsn) as conn:
        requests, _, summary = evaluate_captions(instance, conn, "another-captioner", done.cursor, max_runs=1)
    assert summary.startswith("full") and [r.partition_key for r in requests] == ["cars"]  # capped per tick
    assert "1 left for later" in summary


def test_a_failed_caption_is_requested_again_once_its_retry_is_due(setup, pg_dsn: str) -> None:
    instance, cache, blip = setup
    for shard in ("cars", "parks"):
        _caption(pg_dsn, shard, blip, cache)
    parks = image_ids(pg_dsn, "parks")["green-0.jpg"]
    with db.connect(pg_dsn) as conn:
        conn.execute("UPDATE images SET caption = NULL WHERE id = %s", (parks,))
        caption_queue.record_failures(conn, TINY_BLIP_NAME, "parks", [(parks, "http-500", "boom", False)])
        conn.execute("UPDATE processing_log SET updated_at = now() - interval '1 hour'")  # an old catalogue
    first = _tick(instance, pg_dsn, None)
    assert not first.run_requests  # waiting for its retry: left to the backoff
    with db.connect(pg_dsn) as conn:
        conn.execute("UPDATE caption_failures SET next_attempt_at = now() - interval '1 second'")
    due = _tick(instance, pg_dsn, first.cursor)
    assert [r.partition_key for r in due.run_requests] == ["parks"]
    assert json.loads(first.cursor)["full_scan_at"] == json.loads(due.cursor)["full_scan_at"]  # found incrementally


def test_no_caption_provider_means_no_runs(setup, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    instance, _, _ = setup
    monkeypatch.setenv("CAPTION_PROVIDER", "none")
    result = _tick(instance, pg_dsn, None)
    assert not result.run_requests and "CAPTION_PROVIDER=none" in result.skip_reason.skip_message
    monkeypatch.setenv("CAPTION_PROVIDER", "nonsense")
    bad = _tick(instance, pg_dsn, None)
    assert not bad.run_requests and "CAPTION_PROVIDER must be one of" in bad.skip_reason.skip_message


def test_the_sensor_is_registered_for_the_captions_job(assemblage_env: dict[str, str]) -> None:
    from assemblage_assets.definitions import defs

    sensor = defs.resolve_sensor_def("missing_captions_sensor")
    assert sensor.job_name == "caption_shard_job" and sensor.minimum_interval_seconds == 60
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED

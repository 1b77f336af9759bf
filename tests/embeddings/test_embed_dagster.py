"""The embeddings asset, its checks, the missing-embeddings sensor and the retry-queue schedule
through Dagster, with the tiny CLIP the tests build and the real embedded Postgres."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from support.embed_support import image_ids, ingest, query, shard_resources, tiny_clip, write_tree

from assemblage_assets.core import db
from assemblage_assets.embeddings import retry_queue
from assemblage_assets.embeddings.assets import embeddings
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.embeddings.sensors import evaluate, missing_embeddings_sensor
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.embedding import LocalClipEmbedding
from schedules.retry_queue import retry_queue_schedule


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("models"))


@pytest.fixture
def setup(tmp_path: Path, pg_dsn: str, tiny: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBEDDING_PROVIDER", "local_clip")
    monkeypatch.setenv("CLIP_MODEL", str(tiny))  # the sensor and schedule read the active model from here
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue"], "parks": ["green"], "mixed": ["white", "blue"]})
    cache = tmp_path / "cache"
    shards = ingest(pg_dsn, images, cache)
    resources = shard_resources(pg_dsn, images, cache, tiny)
    # A real (temporary) instance: schedules invoked with resources need its reference.
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, shards)
        yield instance, resources, cache


def test_definitions_load_with_the_embedding_area(assemblage_env: dict[str, str], tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_MODEL", str(tiny))
    from assemblage_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("embed_shard_job") is not None
    assert defs.resolve_sensor_def("missing_embeddings_sensor") is not None
    assert defs.resolve_schedule_def("retry_queue_schedule").cron_schedule == "*/5 * * * *"
    spec = embeddings.specs_by_key[dg.AssetKey("embeddings")]
    assert embeddings.partitions_def.name == IMAGE_SHARDS and dg.AssetKey("r2_objects") in {d.asset_key for d in spec.deps}
    assert {c.name for c in embeddings.check_specs} == {"embedding_count", "vector_dim"}
    assert embeddings.op.pool == "gpu"


def test_materialize_one_partition_with_checks_and_metadata(setup, pg_dsn: str) -> None:
    instance, resources, _ = setup
    result = dg.materialize([embeddings], partition_key="cars", instance=instance, resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("embeddings")[0].metadata
    assert meta["embedded"].value == 2 and meta["model"].value == "tiny-clip" and meta["dim"].value == 16
    assert meta["cost_usd"].value == 0.0 and meta["paid_requests"].value == 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["embedding_count"].passed and checks["vector_dim"].passed
    assert checks["embedding_count"].metadata["vectors"].value == 2
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 2

    # a dimension other than EXPECTED_VECTOR_DIM fails the run before any write
    wrong = {**resources, "embedding": LocalClipEmbedding(clip_model=resources["embedding"].clip_model, expected_vector_dim=768)}
    failed = dg.materialize([embeddings], partition_key="parks", instance=instance, resources=wrong, raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert "EXPECTED_VECTOR_DIM=768" in failure.event_specific_data.error.message
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 2


def _busy_run(instance: dg.DagsterInstance, shard: str) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="embed_shard_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                   tags={"dagster/partition": shard}))
    return run_id


def _tick(instance: dg.DagsterInstance, resources: dict, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"database": resources["database"]}) as context:
        return missing_embeddings_sensor(context)


def test_sensor_requests_exactly_the_partitions_missing_vectors(setup, pg_dsn: str) -> None:
    instance, resources, cache = setup
    with db.connect(pg_dsn) as conn:
        embed_shard(conn, "cars", resources["embedding"], dsn=pg_dsn, cache_dir=cache)
    busy = _busy_run(instance, "mixed")
    result = _tick(instance, resources, None)
    assert [r.partition_key for r in result.run_requests] == ["parks"]  # cars complete, mixed already queued
    cursor = json.loads(result.cursor)
    assert cursor["model"] == "tiny-clip" and cursor["backlog"] == ["mixed"]

    _busy_run(instance, "parks")  # what the tick's request became

    # next tick: incremental; the backlog shard is requested once its queued run is gone
    instance.delete_run(busy)
    result = _tick(instance, resources, result.cursor)
    assert [r.partition_key for r in result.run_requests] == ["mixed"]
    assert json.loads(result.cursor)["backlog"] == ["parks"]  # re-checked until its run has done the work
    _busy_run(instance, "mixed")

    # nothing new: nothing requested, and the tick is cheap (incremental)
    again = _tick(instance, resources, result.cursor)
    assert not again.run_requests and "incremental" in again.skip_reason.skip_message

    # an image of a complete shard losing its vector is seen; a changed active model forces a full scan
    with db.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM image_embeddings WHERE image_id = %s", (image_ids(pg_dsn, "cars")["blue-1.jpg"],))
        conn.execute("UPDATE processing_log SET updated_at = now() WHERE local_path LIKE %s", ("%blue-1.jpg",))
        requests, _, summary = evaluate(instance, conn, "tiny-clip", again.cursor)
        assert summary.startswith("incremental") and [r.partition_key for r in requests] == ["cars"]
        for run in instance.get_runs():
            instance.delete_run(run.run_id)
        requests, _, summary = evaluate(instance, conn, "another-model", again.cursor, max_runs=2)
    assert summary.startswith("full") and [r.partition_key for r in requests] == ["cars", "mixed"]


def test_errored_and_waiting_images_are_left_to_the_queue(setup, pg_dsn: str) -> None:
    instance, resources, cache = setup
    with db.connect(pg_dsn) as conn:
        for shard in ("cars", "mixed"):
            embed_shard(conn, shard, resources["embedding"], dsn=pg_dsn, cache_dir=cache)
        (parks,) = image_ids(pg_dsn, "parks").values()
        retry_queue.record_failures(conn, "tiny-clip", "parks", [(parks, "http-500", "boom")])
        requests, _, _ = evaluate(instance, conn, "tiny-clip", None)
        assert requests == []  # the retry is not due yet: the sensor leaves it to the schedule
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2024, 5, 1, 12, 5, tzinfo=UTC),
                                       resources={"database": resources["database"]}) as context:
            assert isinstance(next(iter(retry_queue_schedule(context))), dg.SkipReason)
            conn.execute("UPDATE embedding_queue SET next_attempt_at = now() - interval '1 second'")
            runs = list(retry_queue_schedule(context))
            assert [r.partition_key for r in runs] == ["parks"] and runs[0].tags["dagster/max_retries"] == "1"
            busy = _busy_run(instance, "parks")
            assert isinstance(next(iter(retry_queue_schedule(context))), dg.SkipReason)  # one run per partition at a time
        instance.delete_run(busy)
        result = dg.materialize([embeddings], partition_key="parks", instance=instance, resources=resources)
        assert result.success and result.asset_materializations_for_node("embeddings")[0].metadata["embedded"].value == 1
        assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_queue")[0]["n"] == 0

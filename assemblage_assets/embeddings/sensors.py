"""``missing_embeddings_sensor``: keeps the vector collection complete.

Finds shards with processed images that lack a vector for the active model (and are neither
errored nor waiting for a retry) and requests ``embed_shard_job`` runs for exactly those
partitions: at most ``MAX_RUNS_PER_TICK`` per tick, never a second one for a partition that
already has a run queued or in progress.

The cursor keeps ticks cheap: a tick only looks at shards whose ``processing_log`` rows
changed since the previous tick (an index on ``updated_at``), plus the backlog the previous
tick found but did not request. Every ``FULL_SCAN_SECONDS``, and whenever the active model
changes, it looks at every shard once.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg

from assemblage_assets.constants import EMBED_SHARD_JOB, MODEL_TAG, TRIGGER_TAG
from assemblage_assets.embeddings.candidates import shards_missing_embeddings
from assemblage_assets.images import catalog
from assemblage_assets.partitions import IMAGE_SHARDS, partitions_in_flight
from resources.database import PostgresResource
from resources.embedding import active_model_id

EMBEDDINGS_ASSET = "embeddings"
MAX_RUNS_PER_TICK = 25
MAX_BACKLOG = 1000  # keeps the cursor small; an overflow forces the next full scan
FULL_SCAN_SECONDS = 3600
OVERLAP_SECONDS = 120  # rows committed late with an earlier updated_at are still seen


def embedding_runs_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Shards with an embeddings run queued or in progress (the job, or any run selecting the asset)."""
    return partitions_in_flight(instance, EMBED_SHARD_JOB, EMBEDDINGS_ASSET)


def _load_cursor(raw: str | None) -> dict[str, Any]:
    try:
        cursor = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        cursor = {}
    return cursor if isinstance(cursor, dict) else {}


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def evaluate(
    instance: dg.DagsterInstance, conn: psycopg.Connection, model: str, raw_cursor: str | None,
    *, max_runs: int = MAX_RUNS_PER_TICK,
) -> tuple[list[dg.RunRequest], str, str]:
    """One tick: (run requests, new cursor, summary). Separate from the decorator for the CLI and tests."""
    cursor = _load_cursor(raw_cursor)
    now = catalog.database_now(conn)
    since = _parse_time(cursor.get("since"))
    full_scan_at = _parse_time(cursor.get("full_scan_at"))
    full = (
        cursor.get("model") != model or since is None or full_scan_at is None
        or (now - full_scan_at).total_seconds() >= FULL_SCAN_SECONDS or cursor.get("overflow")
    )
    backlog = [] if full else list(cursor.get("backlog") or [])
    missing = shards_missing_embeddings(
        conn, model, changed_since=None if full else since - timedelta(seconds=OVERLAP_SECONDS), among=backlog
    )
    registered = set(instance.get_dynamic_partitions(IMAGE_SHARDS))
    busy = embedding_runs_in_flight(instance)
    wanted = [s for s in missing if s in registered]
    to_run = [s for s in wanted if s not in busy][:max_runs]
    left = [s for s in wanted if s not in set(to_run)]
    tick = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    requests = [
        dg.RunRequest(
            partition_key=shard,
            run_key=f"missing:{shard}:{tick}",
            tags={TRIGGER_TAG: "missing_embeddings_sensor", MODEL_TAG: model[:60]},
        )
        for shard in to_run
    ]
    new_cursor = {
        "model": model,
        "since": now.isoformat(),
        "full_scan_at": now.isoformat() if full else cursor.get("full_scan_at"),
        "backlog": left[:MAX_BACKLOG],
        "overflow": len(left) > MAX_BACKLOG,
    }
    summary = (
        f"{'full' if full else 'incremental'} scan for {model}: {len(missing)} shard(s) missing vectors, "
        f"{len(to_run)} requested, {len([s for s in wanted if s in busy])} already queued or running, "
        f"{len(left)} left for later"
    )
    return requests, json.dumps(new_cursor), summary


@dg.sensor(
    name="missing_embeddings_sensor",
    job_name=EMBED_SHARD_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests embeddings runs for shards whose processed images lack a vector for the active model.",
)
def missing_embeddings_sensor(context: dg.SensorEvaluationContext, database: PostgresResource) -> dg.SensorResult:
    """Finds shards missing vectors for the active model (``EMBEDDING_PROVIDER``/model
    settings) and requests their ``embed_shard_job`` runs."""
    with database.connect() as conn:
        requests, cursor, summary = evaluate(context.instance, conn, active_model_id(), context.cursor)
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor,
        skip_reason=None if requests else dg.SkipReason(summary),
    )

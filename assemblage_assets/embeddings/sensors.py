"""``missing_embeddings_sensor``: keeps the vector collection complete;
``missing_captions_sensor`` does the same for captions (below).

Finds shards with processed images that lack a vector for the active model (and are neither
errored nor waiting for a retry) and requests ``embed_shard_job`` runs for exactly those
partitions: at most ``MAX_RUNS_PER_TICK`` per tick, never a second one for a partition that
already has a run queued or in progress.

The cursor keeps ticks cheap: a tick only looks at shards whose ``processing_log`` rows
changed since the previous tick (an index on ``updated_at``), plus the backlog the previous
tick found but did not request. Every ``FULL_SCAN_SECONDS``, and whenever the active model
changes, it looks at every shard once.
"""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg

from assemblage_assets.constants import CAPTION_SHARD_JOB, EMBED_SHARD_JOB, MODEL_TAG, TRIGGER_TAG
from assemblage_assets.embeddings.candidates import shards_missing_embeddings
from assemblage_assets.embeddings.caption_queue import shards_missing_published_captions
from assemblage_assets.images import catalog_reports
from assemblage_assets.partitions import IMAGE_SHARDS, partitions_in_flight
from resources import caption as caption_providers
from resources.database import PostgresResource
from resources.embedding import active_model_id

EMBEDDINGS_ASSET = "embeddings"
CAPTIONS_ASSET = "captions"
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


def _window(cursor: dict[str, Any], model: str, now: datetime) -> tuple[bool, datetime | None, list[str]]:
    """(full scan?, look at rows changed since, backlog) for a tick: a full look when the model
    changed, on the first tick, once per ``FULL_SCAN_SECONDS`` or after a backlog overflow."""
    since = _parse_time(cursor.get("since"))
    full_scan_at = _parse_time(cursor.get("full_scan_at"))
    full = bool(
        cursor.get("model") != model or since is None or full_scan_at is None
        or (now - full_scan_at).total_seconds() >= FULL_SCAN_SECONDS or cursor.get("overflow")
    )
    if full or since is None:
        return True, None, []
    return False, since - timedelta(seconds=OVERLAP_SECONDS), list(cursor.get("backlog") or [])


def _next_cursor(cursor: dict[str, Any], model: str, now: datetime, full: bool, left: list[str]) -> str:
    return json.dumps({
        "model": model,
        "since": now.isoformat(),
        "full_scan_at": now.isoformat() if full else cursor.get("full_scan_at"),
        "backlog": left[:MAX_BACKLOG],
        "overflow": len(left) > MAX_BACKLOG,
    })


def evaluate(
    instance: dg.DagsterInstance, conn: psycopg.Connection, model: str, raw_cursor: str | None,
    *, max_runs: int = MAX_RUNS_PER_TICK,
) -> tuple[list[dg.RunRequest], str, str]:
    """One tick: (run requests, new cursor, summary). Separate from the decorator for the CLI and tests."""
    cursor = _load_cursor(raw_cursor)
    now = catalog_reports.database_now(conn)
    full, changed_since, backlog = _window(cursor, model, now)
    missing = shards_missing_embeddings(conn, model, changed_since=changed_since, among=backlog)
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
    new_cursor = _next_cursor(cursor, model, now, full, left)
    summary = (
        f"{'full' if full else 'incremental'} scan for {model}: {len(missing)} shard(s) missing vectors, "
        f"{len(to_run)} requested, {len([s for s in wanted if s in busy])} already queued or running, "
        f"{len(left)} left for later"
    )
    return requests, new_cursor, summary


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


# --- missing captions -----------------------------------------------------------------------------
#
# The same conventions for the ``captions`` asset when a CAPTION_PROVIDER is configured: shards
# with published images lacking a caption of the active caption model get a ``caption_shard_job``
# run, at most MAX_RUNS_PER_TICK per tick, none for a shard with a captions run in flight; the
# cursor keeps ticks incremental (changed paths, retries fallen due, the backlog) with a full scan
# every FULL_SCAN_SECONDS and whenever the caption model changes. A run key names the state the run
# is for (shard, model, images missing, their latest change, the full-scan period), so a state a
# run already saw is not requested again (a run that captioned nothing leaves it unchanged), yet
# is retried once per period.


def caption_runs_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Shards with a captions run queued or in progress (the job, or any run selecting the asset)."""
    return partitions_in_flight(instance, CAPTION_SHARD_JOB, CAPTIONS_ASSET)


def _caption_run_key(row: dict[str, Any], model: str, period: str) -> str:
    digest = hashlib.sha1(model.encode()).hexdigest()[:8]  # model ids can be long local paths
    changed = row["changed"].astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"captions:{row['shard']}:{digest}:{row['missing']}:{changed}:{period}"


def evaluate_captions(
    instance: dg.DagsterInstance, conn: psycopg.Connection, model: str, raw_cursor: str | None,
    *, max_runs: int = MAX_RUNS_PER_TICK,
) -> tuple[list[dg.RunRequest], str, str]:
    """One tick of ``missing_captions_sensor``: (run requests, new cursor, summary)."""
    cursor = _load_cursor(raw_cursor)
    now = catalog_reports.database_now(conn)
    full, changed_since, backlog = _window(cursor, model, now)
    missing = shards_missing_published_captions(conn, model, changed_since=changed_since, among=backlog)
    registered = set(instance.get_dynamic_partitions(IMAGE_SHARDS))
    busy = caption_runs_in_flight(instance)
    wanted = [r for r in missing if r["shard"] in registered]
    to_run = [r for r in wanted if r["shard"] not in busy][:max_runs]
    requested = {r["shard"] for r in to_run}
    left = [r["shard"] for r in wanted if r["shard"] not in requested]
    scan_period = (now if full else _parse_time(cursor.get("full_scan_at"))).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    requests = [
        dg.RunRequest(
            partition_key=row["shard"],
            run_key=_caption_run_key(row, model, scan_period),
            tags={TRIGGER_TAG: "missing_captions_sensor", MODEL_TAG: model[:60]},
        )
        for row in to_run
    ]
    new_cursor = _next_cursor(cursor, model, now, full, left)
    summary = (
        f"{'full' if full else 'incremental'} scan for caption model {model}: {len(missing)} shard(s) with "
        f"published images missing captions ({sum(r['missing'] for r in missing)} images), {len(to_run)} requested, "
        f"{len([r for r in wanted if r['shard'] in busy])} already queued or running, {len(left)} left for later"
    )
    return requests, new_cursor, summary


@dg.sensor(
    name="missing_captions_sensor",
    job_name=CAPTION_SHARD_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests captions runs for shards whose published images lack a caption of the active "
    "caption model (CAPTION_PROVIDER).",
)
def missing_captions_sensor(context: dg.SensorEvaluationContext, database: PostgresResource) -> dg.SensorResult:
    """Finds shards whose published images lack a caption of the configured caption model and
    requests their ``caption_shard_job`` runs; skips while CAPTION_PROVIDER is ``none``."""
    try:
        provider = caption_providers.from_env()
    except ValueError as exc:  # a bad CAPTION_PROVIDER: say so on every tick, request nothing
        return dg.SensorResult(skip_reason=dg.SkipReason(str(exc)), cursor=context.cursor)
    if not provider.enabled:
        return dg.SensorResult(
            skip_reason=dg.SkipReason("captioning is off (CAPTION_PROVIDER=none)"), cursor=context.cursor
        )
    with database.connect() as conn:
        requests, cursor, summary = evaluate_captions(context.instance, conn, provider.model_id, context.cursor)
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor,
        skip_reason=None if requests else dg.SkipReason(summary),
    )

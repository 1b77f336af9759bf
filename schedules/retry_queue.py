"""``retry_queue_schedule``: every 5 minutes, embeddings runs for the shards whose queued
retries are due (failed images after their 1/2/5-minute backoff, images rescheduled by the
rate limit), skipping shards that already have an embeddings run queued or in progress."""

from collections.abc import Iterator

import dagster as dg

from assemblage_assets.constants import EMBED_SHARD_JOB, TRIGGER_TAG
from assemblage_assets.embeddings import retry_queue
from assemblage_assets.embeddings.sensors import embedding_runs_in_flight
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource
from resources.embedding import active_model_id

MAX_RUNS_PER_TICK = 50


@dg.schedule(
    name="retry_queue_schedule",
    cron_schedule="*/5 * * * *",
    job_name=EMBED_SHARD_JOB,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Launches embeddings runs for shards with due retries in the embedding queue.",
)
def retry_queue_schedule(
    context: dg.ScheduleEvaluationContext, database: PostgresResource
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    """Yields one run request per shard with due retries (at most ``MAX_RUNS_PER_TICK``)."""
    model = active_model_id()
    with database.connect() as conn:
        due = retry_queue.due_shards(conn, model, limit=MAX_RUNS_PER_TICK * 4)
    registered = set(context.instance.get_dynamic_partitions(IMAGE_SHARDS))
    busy = embedding_runs_in_flight(context.instance)
    shards = [s for s in due if s in registered and s not in busy][:MAX_RUNS_PER_TICK]
    if not shards:
        yield dg.SkipReason(f"no due retries for {model}" if not due else "every shard with due retries has a run waiting")
        return
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else "now"
    for shard in shards:
        yield dg.RunRequest(
            partition_key=shard,
            run_key=f"retry:{shard}:{tick}",
            tags={TRIGGER_TAG: "retry_queue_schedule", "dagster/max_retries": "1"},
        )

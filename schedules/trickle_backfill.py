"""``trickle_backfill_schedule``: every few minutes, a bounded trickle of vehicle listing images
for each organization that has vehicles waiting."""

from collections.abc import Iterator

import dagster as dg

from assemblage_assets.constants import VEHICLE_BACKFILL_JOB
from assemblage_assets.core import settings
from assemblage_assets.partitions import VEHICLE_ORGANIZATIONS, add_partitions, partitions_in_flight
from assemblage_assets.vehicles import records
from assemblage_assets.vehicles.backfill import allocate
from assemblage_assets.vehicles.jobs import backfill_run_config, vehicle_backfill_job
from resources.database import PostgresResource

DEFAULT_CRON = "*/15 * * * *"
DEFAULT_LIMIT = 100
VEHICLE_ASSET = "vehicle_image_backfill"


@dg.schedule(
    name="trickle_backfill_schedule",
    cron_schedule=settings.env_str("TRICKLE_BACKFILL_CRON", DEFAULT_CRON),
    job=vehicle_backfill_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def trickle_backfill_schedule(
    context: dg.ScheduleEvaluationContext, database: PostgresResource
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    """Requests one run per organization with vehicles due for image backfill, sharing
    ``TRICKLE_BACKFILL_LIMIT`` vehicles (default 100) between them; organizations whose
    previous run is still queued or running are skipped. Registers the organizations'
    partitions before requesting their runs."""
    limit = settings.env_int("TRICKLE_BACKFILL_LIMIT", DEFAULT_LIMIT)
    with database.connect() as conn:
        due = records.due_counts(conn)
    busy = partitions_in_flight(context.instance, VEHICLE_BACKFILL_JOB, VEHICLE_ASSET)
    plan = allocate([(key, n) for key, n in due if key not in busy], limit)
    if not plan:
        yield dg.SkipReason(
            f"no vehicles due for image backfill (skipped in flight: {', '.join(sorted(busy))})"
            if busy
            else "no vehicles due for image backfill"
        )
        return
    added = add_partitions(context.instance, VEHICLE_ORGANIZATIONS, [key for key, _ in plan])
    if added:
        context.log.info(f"registered {len(added)} organization partition(s)")
    for key, n in plan:
        yield dg.RunRequest(
            partition_key=key,
            run_key=f"trickle:{key}",
            run_config=backfill_run_config(n),
            tags={"dagster/max_retries": "1"},
        )

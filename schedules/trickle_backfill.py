"""``trickle_backfill_schedule``: every few minutes, a bounded trickle of vehicle listing images
for each organization that has vehicles waiting."""

from collections.abc import Iterable, Iterator

import dagster as dg
from assemblage_assets.jobs import vehicle_backfill_job

from assemblage_assets.core import settings
from assemblage_assets.partitions import VEHICLE_ORGANIZATIONS
from assemblage_assets.vehicles import backfill as vehicles
from assemblage_assets.vehicles.assets import vehicle_image_backfill
from resources.database import PostgresResource

DEFAULT_CRON = "*/15 * * * *"
DEFAULT_LIMIT = 100
MAX_KEYS_PER_REQUEST = 1000  # large single adds are slow on instance storage
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def register_organizations(instance: dg.DagsterInstance, keys: Iterable[str]) -> list[str]:
    """Add the organization partitions that do not exist yet; returns the keys added."""
    known = set(instance.get_dynamic_partitions(VEHICLE_ORGANIZATIONS))
    new = [key for key in dict.fromkeys(keys) if key not in known]
    for start in range(0, len(new), MAX_KEYS_PER_REQUEST):
        instance.add_dynamic_partitions(VEHICLE_ORGANIZATIONS, new[start : start + MAX_KEYS_PER_REQUEST])
    return new


def organizations_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Organizations with a backfill run queued or running (from this job or a UI launch)."""
    busy = set()
    for run in instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT)):
        ours = run.job_name == vehicle_backfill_job.name or vehicle_image_backfill.key in (run.asset_selection or ())
        key = run.tags.get("dagster/partition")
        if ours and key:
            busy.add(key)
    return busy


def run_config(limit: int, **options: object) -> dict:
    return {"ops": {vehicle_image_backfill.op.name: {"config": {"limit": limit, **options}}}}


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
        due = vehicles.due_counts(conn)
    busy = organizations_in_flight(context.instance)
    plan = vehicles.allocate([(key, n) for key, n in due if key not in busy], limit)
    if not plan:
        yield dg.SkipReason(
            f"no vehicles due for image backfill (skipped in flight: {', '.join(sorted(busy))})"
            if busy
            else "no vehicles due for image backfill"
        )
        return
    added = register_organizations(context.instance, [key for key, _ in plan])
    if added:
        context.log.info(f"registered {len(added)} organization partition(s)")
    for key, n in plan:
        yield dg.RunRequest(
            partition_key=key,
            run_key=f"trickle:{key}",
            run_config=run_config(n),
            tags={"dagster/max_retries": "1"},
        )

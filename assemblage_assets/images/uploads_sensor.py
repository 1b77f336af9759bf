"""``uploads_sensor``: the real-time path. New entries of the uploads source (``UPLOADS_SOURCE``,
one of ``IMAGE_SOURCES``, e.g. the Supabase uploads bucket) are picked up every minute
(``UPLOADS_SENSOR_INTERVAL_SECONDS``) and their shards run through the same ingest job.

How a tick finds them depends on the source (``uploads_feed.py``): Dropbox's change cursor, a
bucket's event notifications (``UPLOADS_QUEUE_URL``: SQS for S3, a Cloudflare Queue for R2)
with a periodic full reconciliation listing, or else a full listing every tick. The run's ``raw_files`` then
downloads only what is new or changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dagster as dg

from assemblage_assets.constants import INGEST_SHARD_JOB
from assemblage_assets.core import settings
from assemblage_assets.images.uploads_feed import (
    DEFAULT_LISTING_BUDGET_SECONDS,
    DEFAULT_RECONCILE_SECONDS,
    UploadsCursor,
    plan_tick,
    queue_from_env,
)
from assemblage_assets.partitions import IMAGE_SHARDS, add_partitions_requests
from resources.image_library import ImageLibraryResource
from resources.image_source import ImageSource, S3Source, SourceError
from resources.upload_queue import QueueError


def uploads_source(sources: Sequence[ImageSource], wanted: str) -> ImageSource | None:
    """The configured source ``UPLOADS_SOURCE`` names (by URI or label)."""
    wanted = wanted.strip()
    for source in sources:
        if wanted and wanted in (source.uri, source.uri.rstrip("/"), source.label):
            return source
    return None


INTERVAL_SECONDS = settings.env_int("UPLOADS_SENSOR_INTERVAL_SECONDS", 60)


@dg.sensor(
    name="uploads_sensor",
    job_name=INGEST_SHARD_JOB,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING if settings.env_str("UPLOADS_SOURCE") else dg.DefaultSensorStatus.STOPPED,
)
def uploads_sensor(context: dg.SensorEvaluationContext, library: ImageLibraryResource) -> dg.SensorResult | dg.SkipReason:
    """Runs the ingest job for every shard of the uploads source (UPLOADS_SOURCE) with new
    entries since the last tick, registering new shards as partitions."""
    sources = library.sources()
    source = uploads_source(sources, settings.env_str("UPLOADS_SOURCE"))
    if source is None or source.is_local:
        return dg.SkipReason("UPLOADS_SOURCE does not name a bucket or Dropbox source of IMAGE_SOURCES")
    # a received message must stay hidden until the next tick deletes it, a slow tick included
    queue = None
    try:
        queue = queue_from_env(min_visibility=2 * INTERVAL_SECONDS + 60) if isinstance(source, S3Source) else None
        plan = plan_tick(sources, source, UploadsCursor.parse(context.cursor), queue=queue, now=time.time(),
                         reconcile_seconds=settings.env_float("UPLOADS_RECONCILE_SECONDS", DEFAULT_RECONCILE_SECONDS),
                         budget_seconds=settings.env_float("UPLOADS_LISTING_BUDGET_SECONDS", DEFAULT_LISTING_BUDGET_SECONDS))
    except (SourceError, QueueError) as exc:  # the old cursor stays: the next tick asks again
        return dg.SkipReason(f"cannot read {'the uploads queue' if isinstance(exc, QueueError) else source.uri}: {exc}")
    for note in plan.notes:
        context.log.warning(note)
    calls = {**source.request_counts(), **(queue.request_counts() if queue else {})}
    context.log.info(f"{len(plan.shards)} shard(s) with new uploads in {source.uri} ({plan.how}); calls: {calls}")
    if not plan.shards:
        return dg.SensorResult(skip_reason=f"no new uploads in {source.uri} ({plan.how})", cursor=plan.cursor.dump())
    known = set(context.instance.get_dynamic_partitions(IMAGE_SHARDS))
    new_keys = [s.ref.key for s in plan.shards if s.ref.key not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=s.ref.key, run_key=s.run_key) for s in plan.shards],
        dynamic_partitions_requests=add_partitions_requests(IMAGE_SHARDS, new_keys) if new_keys else [],
        cursor=plan.cursor.dump(),
    )

"""``uploads_sensor``: the real-time path. New entries of the uploads source (``UPLOADS_SOURCE``,
one of ``IMAGE_SOURCES``, e.g. the Supabase uploads bucket) are picked up every minute
(``UPLOADS_SENSOR_INTERVAL_SECONDS``) and their shards run through the same ingest job.

Each tick streams the source's listing (page by page, flat memory) and requests a run for every
shard holding an entry modified after the cursor (the newest server time seen so far); the
run's ``raw_files`` then downloads only what is new or changed. Shards are compared with the
cursor minus ``OVERLAP_SECONDS`` (an upload can land in a shard already listed while a later
shard is being listed); the run key (shard, its newest time and a fingerprint of the entries in
the window) keeps Dagster from requesting the same run twice while two uploads in the same
second still get a run each.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import dagster as dg

from assemblage_assets.constants import INGEST_SHARD_JOB
from assemblage_assets.core import settings
from assemblage_assets.images.sources import ShardRef, shard_refs
from assemblage_assets.partitions import IMAGE_SHARDS, add_partitions_requests
from resources.image_library import ImageLibraryResource
from resources.image_source import ImageSource, SourceEntry, SourceError

MAX_RUNS_PER_TICK = 100
OVERLAP_SECONDS = 300.0


def uploads_source(sources: Sequence[ImageSource], wanted: str) -> ImageSource | None:
    """The configured source ``UPLOADS_SOURCE`` names (by URI or label)."""
    wanted = wanted.strip()
    for source in sources:
        if wanted and wanted in (source.uri, source.uri.rstrip("/"), source.label):
            return source
    return None


def _fingerprint(entries: Sequence[SourceEntry]) -> str:
    """Order-independent digest of (uri, marker) pairs: two uploads within one second of each
    other (S3 times have 1 s resolution) still give the shard a new run key."""
    total = 0
    for e in entries:
        total = (total + int.from_bytes(hashlib.blake2b(f"{e.uri}\0{e.marker}".encode(), digest_size=8).digest())) % 2**64
    return f"{len(entries)}-{total:016x}"


def new_uploads(sources: Sequence[ImageSource], source: ImageSource, since: float) -> tuple[list[tuple[ShardRef, float, str]], float]:
    """Shards of ``source`` with entries modified after ``since`` (with their newest time and a
    fingerprint of those entries), and the newest time seen overall."""
    newest_overall = since
    found: list[tuple[ShardRef, float, str]] = []
    refs = [ref for ref in shard_refs(sources) if ref.source is source]
    for ref in refs:
        assert ref.remote is not None
        newest, recent = 0.0, []
        for e in source.entries(ref.remote):
            newest = max(newest, e.modified or 0.0)
            if (e.modified or 0.0) > since:
                recent.append(e)  # only the entries of this tick's window: a handful, not the shard
        if newest > since:
            found.append((ref, newest, _fingerprint(recent)))
            newest_overall = max(newest_overall, newest)
    return found, newest_overall


@dg.sensor(
    name="uploads_sensor",
    job_name=INGEST_SHARD_JOB,
    minimum_interval_seconds=settings.env_int("UPLOADS_SENSOR_INTERVAL_SECONDS", 60),
    default_status=dg.DefaultSensorStatus.RUNNING if settings.env_str("UPLOADS_SOURCE") else dg.DefaultSensorStatus.STOPPED,
)
def uploads_sensor(context: dg.SensorEvaluationContext, library: ImageLibraryResource) -> dg.SensorResult | dg.SkipReason:
    """Runs the ingest job for every shard of the uploads source (UPLOADS_SOURCE) with new
    entries since the last tick, registering new shards as partitions."""
    sources = library.sources()
    source = uploads_source(sources, settings.env_str("UPLOADS_SOURCE"))
    if source is None or source.is_local:
        return dg.SkipReason("UPLOADS_SOURCE does not name a bucket or Dropbox source of IMAGE_SOURCES")
    since = float(json.loads(context.cursor or "{}").get("since", 0.0))
    try:
        found, newest = new_uploads(sources, source, max(0.0, since - OVERLAP_SECONDS))
    except SourceError as exc:
        return dg.SkipReason(f"cannot list {source.uri}: {exc}")
    if not found:
        return dg.SkipReason(f"no new uploads in {source.uri}")
    found = sorted(found, key=lambda item: item[1])[:MAX_RUNS_PER_TICK]
    cursor = max(since, max(t for _, t, _ in found) if len(found) == MAX_RUNS_PER_TICK else newest)
    known = set(context.instance.get_dynamic_partitions(IMAGE_SHARDS))
    new_keys = [ref.key for ref, _, _ in found if ref.key not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=ref.key, run_key=f"uploads:{ref.key}:{t:.3f}:{fp}")
                      for ref, t, fp in found],
        dynamic_partitions_requests=add_partitions_requests(IMAGE_SHARDS, new_keys) if new_keys else [],
        cursor=json.dumps({"since": cursor}),
    )

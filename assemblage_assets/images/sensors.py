"""``image_shards_sensor``: new folders of IMAGES_DIR become ``image_shards`` partitions and runs."""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from assemblage_assets.constants import INGEST_SHARD_JOB
from assemblage_assets.images.shards import Shard, discover_shards
from assemblage_assets.images.sources import shard_refs
from assemblage_assets.partitions import IMAGE_SHARDS, add_partitions, add_partitions_requests
from resources.image_library import ImageLibraryResource
from resources.image_source import ImageSource, SourceError

MAX_RUNS_PER_TICK = 100


def unregistered_shards(instance: dg.DagsterInstance, images_dir: Path) -> list[Shard]:
    """Shards on disk that are not yet partitions, in a stable order; fails on key collisions."""
    known = set(instance.get_dynamic_partitions(IMAGE_SHARDS))
    found: dict[str, Shard] = {}
    for shard in discover_shards(images_dir):
        if shard.key in found:
            raise ValueError(f"folders {found[shard.key].path} and {shard.path} map to the same shard key {shard.key!r}")
        found[shard.key] = shard
    return [found[k] for k in sorted(found) if k not in known]


def unregistered_source_keys(instance: dg.DagsterInstance, sources: Sequence[ImageSource]) -> list[str]:
    """Shard keys of every source not yet partitions, sorted; fails on key collisions."""
    known = set(instance.get_dynamic_partitions(IMAGE_SHARDS))
    found: dict[str, str] = {}
    for ref in shard_refs(sources):
        if ref.key in found:
            raise ValueError(f"{found[ref.key]} and {ref.display_name} map to the same shard key {ref.key!r}")
        found[ref.key] = ref.display_name
    return sorted(k for k in found if k not in known)


def register_shards(instance: dg.DagsterInstance, images_dir: Path) -> list[str]:
    """Add every unregistered shard as a partition; returns the keys added."""
    return add_partitions(instance, IMAGE_SHARDS, [s.key for s in unregistered_shards(instance, images_dir)])


@dg.sensor(
    name="image_shards_sensor",
    job_name=INGEST_SHARD_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def image_shards_sensor(context: dg.SensorEvaluationContext, library: ImageLibraryResource) -> dg.SensorResult | dg.SkipReason:
    """Adds a partition for each new folder of IMAGES_DIR (or of every source of IMAGE_SOURCES)
    and requests its ingest run."""
    if not library.image_sources and not library.root.is_dir():
        return dg.SkipReason(f"images directory {library.root} does not exist")
    try:
        new = unregistered_source_keys(context.instance, library.sources())[:MAX_RUNS_PER_TICK]
    except (SourceError, FileNotFoundError) as exc:
        return dg.SkipReason(f"cannot list the image sources: {exc}")
    if not new:
        return dg.SkipReason("no new shards")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key, run_key=f"discover:{key}") for key in new],
        dynamic_partitions_requests=add_partitions_requests(IMAGE_SHARDS, new),
    )

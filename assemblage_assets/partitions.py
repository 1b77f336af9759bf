"""The two dynamic partition sets and the instance helpers every area uses with them."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

IMAGE_SHARDS = "image_shards"
VEHICLE_ORGANIZATIONS = "vehicle_organizations"
NO_ORGANIZATION = "no-organization"  # partition of the vehicles without an organization id
MAX_KEYS_PER_ADD = 1000  # large single adds are slow on instance storage (SQLite fails near 36k)

# One partition per directory shard of IMAGES_DIR; keys come from images.shards.shard_key.
image_shards_partitions_def = dg.DynamicPartitionsDefinition(name=IMAGE_SHARDS)
# One partition per organization id, plus NO_ORGANIZATION. Added by trickle_backfill_schedule
# and `assemblage backfill-vehicles` before they launch runs.
vehicle_organizations_partitions_def = dg.DynamicPartitionsDefinition(name=VEHICLE_ORGANIZATIONS)

IN_FLIGHT_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def add_partitions(instance: dg.DagsterInstance, partitions_def_name: str, keys: Iterable[str]) -> list[str]:
    """Add the keys that are not partitions yet, at most ``MAX_KEYS_PER_ADD`` per call; returns
    the keys added, in the order given."""
    known = set(instance.get_dynamic_partitions(partitions_def_name))
    new = [key for key in dict.fromkeys(keys) if key not in known]
    for start in range(0, len(new), MAX_KEYS_PER_ADD):
        instance.add_dynamic_partitions(partitions_def_name, new[start : start + MAX_KEYS_PER_ADD])
    return new


def add_partitions_requests(partitions_def_name: str, keys: list[str]) -> list[dg.AddDynamicPartitionsRequest]:
    """The same chunking for a sensor, which adds partitions through its result."""
    return [
        dg.AddDynamicPartitionsRequest(partitions_def_name=partitions_def_name, partition_keys=keys[i : i + MAX_KEYS_PER_ADD])
        for i in range(0, len(keys), MAX_KEYS_PER_ADD)
    ]


def partitions_in_flight(instance: dg.DagsterInstance, job_name: str, *asset_names: str) -> set[str]:
    """Partition keys with a run of ``job_name``, or any run selecting one of ``asset_names`` (a
    UI launch), queued or in progress: sensors, schedules and the CLI never start a second one."""
    busy = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT_RUN_STATUSES)):
        key = run.tags.get("dagster/partition")
        if not key:
            continue
        selection = run.asset_selection or set()
        if run.job_name == job_name or any(k.to_user_string() in asset_names for k in selection):
            busy.add(key)
    return busy

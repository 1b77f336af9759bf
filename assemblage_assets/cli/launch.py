"""Launch shard and vehicle jobs through Dagster from the CLI: same definitions, same instance as the UI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assemblage_assets.core import settings
from assemblage_assets.images.shards import discover_shards

QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class ShardRun:
    shard: str
    run_id: str
    success: bool
    seconds: float
    error: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # of the run's materializations


def materialize_shards(
    job_name: str,
    images_dir: Path,
    shard_keys: Sequence[str] = (),
    *,
    verbose: bool = False,
    progress: Callable[[str], None] = print,
) -> list[ShardRun]:
    """Register the shards of ``images_dir`` and run ``job_name`` once per selected shard."""
    os.environ["IMAGES_DIR"] = str(images_dir)
    settings.ensure_dagster_home()
    import dagster as dg

    # Imported after IMAGES_DIR is set: resources read the environment when definitions load.
    from assemblage_assets.definitions import defs
    from assemblage_assets.images.sensors import register_shards

    instance = dg.DagsterInstance.get()
    added = register_shards(instance, images_dir)
    if added:
        progress(f"registered {len(added)} new shard partition(s): {', '.join(added)}")
    on_disk = [s.key for s in discover_shards(images_dir)]
    keys = list(shard_keys) or sorted(on_disk)
    unknown = sorted(set(keys) - set(on_disk))
    if unknown:
        raise SystemExit(f"unknown shard key(s) {unknown}; shards of {images_dir}: {sorted(on_disk)}")

    run_config = None if verbose else QUIET_LOGGING
    return run_partitions(defs.resolve_job_def(job_name), {key: run_config for key in keys}, instance, progress)


def run_partition(
    job: Any, key: str, instance: Any, run_config: dict[str, Any] | None = None, resources: dict[str, Any] | None = None
) -> ShardRun:
    """``execute_in_process`` for one registered partition key; the outcome and its metadata."""
    started = time.perf_counter()
    result = job.execute_in_process(
        partition_key=key, instance=instance, run_config=run_config, raise_on_error=False, resources=resources
    )
    error = ""
    if not result.success:
        failed = [e for e in result.all_events if e.is_step_failure]
        error = failed[0].event_specific_data.error.message.strip() if failed else "run failed"
    metadata = {
        name: value.value
        for m in result.get_asset_materialization_events()
        for name, value in m.materialization.metadata.items()
    }
    return ShardRun(key, result.run_id, result.success, time.perf_counter() - started, error, metadata)


def run_partitions(
    job: Any, run_configs: dict[str, dict[str, Any] | None], instance: Any, progress: Callable[[str], None] = print
) -> list[ShardRun]:
    """``run_partition`` once per partition key (already registered) with its run config."""
    runs = []
    for index, (key, run_config) in enumerate(run_configs.items(), 1):
        run = run_partition(job, key, instance, run_config)
        runs.append(run)
        state = "ok" if run.success else f"FAILED: {run.error}"
        progress(f"[{index}/{len(run_configs)}] {job.name} {key}: {state} ({run.seconds:.1f}s, run {run.run_id[:8]})")
    return runs


def materialize_vehicle_backfill(
    organization: str | None,
    options: dict[str, Any],
    *,
    verbose: bool = False,
    progress: Callable[[str], None] = print,
) -> list[ShardRun]:
    """``vehicle_image_backfill`` for one organization, or for every organization with vehicles
    due (sharing ``options["limit"]`` like the schedule does), as runs of ``vehicle_backfill_job``."""
    settings.ensure_dagster_home()
    import dagster as dg

    from assemblage_assets.core import db
    from assemblage_assets.definitions import defs
    from assemblage_assets.vehicles.backfill import backfill as vehicles
    from schedules.trickle_backfill import register_organizations, run_config

    limit = options.pop("limit")
    if organization:
        try:
            vehicles.organization_filter(organization)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        plan = [(organization, limit)]
    else:
        dsn = db.resolve_dsn()
        db.migrate(dsn)
        with db.connect(dsn) as conn:
            plan = vehicles.allocate(vehicles.due_counts(conn), limit)
        if not plan:
            progress("no vehicles due for image backfill")
            return []
    instance = dg.DagsterInstance.get()
    added = register_organizations(instance, [key for key, _ in plan])
    if added:
        progress(f"registered {len(added)} new organization partition(s): {', '.join(added)}")
    logging = {} if verbose else QUIET_LOGGING
    configs = {key: {**logging, **run_config(n, **options)} for key, n in plan}
    return run_partitions(defs.resolve_job_def("vehicle_backfill_job"), configs, instance, progress)

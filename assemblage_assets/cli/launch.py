"""Launch jobs through Dagster from the CLI: the same definitions and the same instance as the UI,
so every run the CLI makes shows up there. Runs go in process, one partition at a time.

Each run is tagged with the process and machine that run it. A process killed mid-run leaves
its run STARTED in the instance (no daemon watches in-process runs); the next command finds
runs whose process is gone and marks them failed, and it refuses to start a second run of a
partition whose run is really still going (here, in the UI, a sensor or a schedule).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assemblage_assets.cli.common import database_dsn
from assemblage_assets.constants import EMBED_SHARD_JOB, INGEST_SHARD_JOB, VEHICLE_BACKFILL_JOB
from assemblage_assets.images.shards import discover_shards
from assemblage_assets.platform.dagster_home import ensure_dagster_home

QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
LAUNCHER_PID_TAG = "assemblage/launcher-pid"
LAUNCHER_HOST_TAG = "assemblage/launcher-host"


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
    skip_idle: bool = False,
    run_config: dict[str, Any] | None = None,
) -> list[ShardRun]:
    """Register the shards of ``images_dir`` and run ``job_name`` once per selected shard; with
    ``skip_idle``, only per shard with something to do (``idle_shards``)."""
    os.environ["IMAGES_DIR"] = str(images_dir)
    ensure_dagster_home()
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

    if skip_idle:
        idle = idle_shards(job_name, images_dir, keys, progress)
        keys = [key for key in keys if key not in idle]
    config = {**(run_config or {}), **({} if verbose else QUIET_LOGGING)} or None
    return run_partitions(defs.resolve_job_def(job_name), {key: config for key in keys}, instance, progress)


def idle_shards(job_name: str, images_dir: Path, keys: Sequence[str], progress: Callable[[str], None] = print) -> set[str]:
    """Shards where a run of ``job_name`` would find nothing to do, read from the tree, the
    catalogue and the store's last full checks (no run started, nothing written)."""
    from assemblage_assets.core import db
    from assemblage_assets.images import idle
    from resources import object_store

    started = time.perf_counter()
    with object_store.from_env().process_config_and_initialize_cm() as store, db.connect(database_dsn()) as conn:
        if job_name == INGEST_SHARD_JOB:
            plans = list(idle.plan_ingest(conn, images_dir, keys, store))
        else:
            plans = list(idle.plan_publish(conn, keys, store))
    skipped = {p.shard for p in plans if p.idle}
    for plan in plans:
        if not plan.idle and len(keys) <= 50:
            progress(f"{plan.shard}: {plan.reason}")
    progress(f"{len(skipped)} of {len(keys)} shard(s) have nothing to do, skipped "
             f"({time.perf_counter() - started:.1f}s to check; --every-shard runs them anyway)")
    return skipped


def run_partition(
    job: Any, key: str, instance: Any, run_config: dict[str, Any] | None = None, resources: dict[str, Any] | None = None
) -> ShardRun:
    """``execute_in_process`` for one registered partition key; the outcome and its metadata."""
    started = time.perf_counter()
    result = job.execute_in_process(
        partition_key=key, instance=instance, run_config=run_config, raise_on_error=False, resources=resources,
        tags={LAUNCHER_PID_TAG: str(os.getpid()), LAUNCHER_HOST_TAG: socket.gethostname()},
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
    """``run_partition`` once per partition key (already registered) with its run config,
    except partitions that have a run in flight (see the module docstring)."""
    runs = []
    busy = busy_partitions(job, instance, progress)
    for index, (key, run_config) in enumerate(run_configs.items(), 1):
        run = refused(key) if key in busy else run_partition(job, key, instance, run_config)
        runs.append(run)
        state = "ok" if run.success else f"FAILED: {run.error}"
        progress(f"[{index}/{len(run_configs)}] {job.name} {key}: {state} ({run.seconds:.1f}s, run {run.run_id[:8]})")
    return runs


def fail_orphaned_runs(instance: Any) -> int:
    """Mark failed the in-flight runs an ``assemblage`` process on this machine started and that
    process is gone (killed); returns how many. A reused pid only keeps a run marked in flight."""
    import dagster as dg

    from assemblage_assets.partitions import IN_FLIGHT_RUN_STATUSES

    orphaned = 0
    host = socket.gethostname()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT_RUN_STATUSES, tags={LAUNCHER_HOST_TAG: host})):
        pid = run.tags.get(LAUNCHER_PID_TAG, "")
        if pid.isdigit() and not _alive(int(pid)):
            instance.report_run_failed(run, f"the assemblage process {pid} that ran it is gone (killed?)")
            orphaned += 1
    return orphaned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def busy_partitions(job: Any, instance: Any, progress: Callable[[str], None] = print) -> set[str]:
    """Partitions of ``job`` with a run queued or in progress, after failing orphaned runs."""
    from assemblage_assets.partitions import partitions_in_flight

    orphaned = fail_orphaned_runs(instance)
    if orphaned:
        progress(f"marked {orphaned} run(s) of killed assemblage processes as failed")
    assets = [key.to_user_string() for key in job.asset_layer.executable_asset_keys]
    return partitions_in_flight(instance, job.name, *assets)


def refused(key: str) -> ShardRun:
    return ShardRun(key, "", False, 0.0, "a run of this partition is already queued or in progress; not started twice")


def launch_embed_runs(
    shard: str | None = None, *, limit: int = 0, verbose: bool = False, progress: Any = print
) -> list[Any]:
    """One in-process ``embed_shard_job`` run per shard with missing vectors, in the instance the
    UI reads; ``limit`` is shared by all of them (each run gets what the previous ones left).
    Resources are built from the environment now, not when the definitions were first imported."""

    from assemblage_assets.core import db
    from assemblage_assets.embeddings.candidates import shards_missing_embeddings
    from resources import embedding
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    ensure_dagster_home()
    from assemblage_assets.definitions import defs

    provider = embedding.from_env()
    with db.connect(database_dsn()) as conn:
        shards = shards_missing_embeddings(conn, provider.model_id)
    if shard:
        shards = [s for s in shards if s == shard]
    resources = {"embedding": provider, "library": ImageLibraryResource.from_env(), "database": PostgresResource()}
    return run_shards_with_limit(defs.resolve_job_def(EMBED_SHARD_JOB), "embeddings", "embedded", shards, resources,
                                 limit=limit, verbose=verbose, progress=progress)


def run_shards_with_limit(
    job: Any, asset: str, done_key: str, shards: Sequence[str], resources: dict[str, Any], *,
    limit: int | None = None, verbose: bool = False, progress: Callable[[str], None] = print,
) -> list[ShardRun]:
    """One in-process run of ``job`` per shard (registered first), sharing ``limit`` between
    them: each run's ``asset`` gets what the previous runs left, counting ``done_key`` and
    failures from their metadata. A shard already in flight is refused, not run twice."""
    import dagster as dg

    from assemblage_assets.partitions import IMAGE_SHARDS, add_partitions

    instance = dg.DagsterInstance.get()
    add_partitions(instance, IMAGE_SHARDS, shards)
    runs, remaining = [], limit
    busy = busy_partitions(job, instance, progress)
    for index, key in enumerate(shards, 1):
        if limit and remaining <= 0:
            break
        run_config: dict[str, Any] = {} if verbose else dict(QUIET_LOGGING)
        if limit:
            run_config["ops"] = {asset: {"config": {"limit": remaining}}}
        run = refused(key) if key in busy else run_partition(job, key, instance, run_config or None, resources)
        runs.append(run)
        state = f"{run.metadata.get(done_key, 0)} {done_key}" if run.success else f"FAILED: {run.error}"
        progress(f"[{index}/{len(shards)}] {job.name} {key}: {state} ({run.seconds:.1f}s, run {run.run_id[:8]})")
        remaining -= int(run.metadata.get(done_key, 0) or 0) + int(run.metadata.get("failed", 0) or 0)
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
    ensure_dagster_home()
    import dagster as dg

    from assemblage_assets.core import db
    from assemblage_assets.definitions import defs
    from assemblage_assets.partitions import VEHICLE_ORGANIZATIONS, add_partitions
    from assemblage_assets.vehicles import records
    from assemblage_assets.vehicles.backfill import allocate
    from assemblage_assets.vehicles.jobs import backfill_run_config

    limit = options.pop("limit")
    if organization:
        try:
            records.organization_filter(organization)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        plan = [(organization, limit)]
    else:
        with db.connect(database_dsn()) as conn:
            plan = allocate(records.due_counts(conn), limit)
        if not plan:
            progress("no vehicles due for image backfill")
            return []
    instance = dg.DagsterInstance.get()
    added = add_partitions(instance, VEHICLE_ORGANIZATIONS, [key for key, _ in plan])
    if added:
        progress(f"registered {len(added)} new organization partition(s): {', '.join(added)}")
    logging = {} if verbose else QUIET_LOGGING
    configs = {key: {**logging, **backfill_run_config(n, **options)} for key, n in plan}
    return run_partitions(defs.resolve_job_def(VEHICLE_BACKFILL_JOB), configs, instance, progress)

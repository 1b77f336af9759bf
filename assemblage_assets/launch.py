"""Launch shard jobs through Dagster from the CLI: same definitions, same instance as the UI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from assemblage_assets import settings
from assemblage_assets.shards import discover_shards

QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class ShardRun:
    shard: str
    run_id: str
    success: bool
    seconds: float
    error: str = ""


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
    from assemblage_assets.shard_sensor import register_shards

    instance = dg.DagsterInstance.get()
    added = register_shards(instance, images_dir)
    if added:
        progress(f"registered {len(added)} new shard partition(s): {', '.join(added)}")
    on_disk = [s.key for s in discover_shards(images_dir)]
    keys = list(shard_keys) or sorted(on_disk)
    unknown = sorted(set(keys) - set(on_disk))
    if unknown:
        raise SystemExit(f"unknown shard key(s) {unknown}; shards of {images_dir}: {sorted(on_disk)}")

    job = defs.resolve_job_def(job_name)
    runs = []
    for index, key in enumerate(keys, 1):
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=key,
            instance=instance,
            run_config=None if verbose else QUIET_LOGGING,
            raise_on_error=False,
        )
        error = ""
        if not result.success:
            failed = [e for e in result.all_events if e.is_step_failure]
            error = failed[0].event_specific_data.error.message.strip() if failed else "run failed"
        run = ShardRun(key, result.run_id, result.success, time.perf_counter() - started, error)
        runs.append(run)
        state = "ok" if run.success else f"FAILED: {run.error}"
        progress(f"[{index}/{len(keys)}] {job_name} {key}: {state} ({run.seconds:.1f}s, run {run.run_id[:8]})")
    return runs

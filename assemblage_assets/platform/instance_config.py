"""The Dagster instance's ``dagster.yaml``: storage, run queue and concurrency limits from the environment.

Rendered by ``platform.dagster_home.ensure_dagster_home`` (and ``assemblage dagster-config``). A file carrying
``MANAGED_HEADER`` is ours and is rewritten when the environment changes; any other dagster.yaml
belongs to the user and is left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from assemblage_assets.constants import EMBED_STAGE, STAGE_TAG
from assemblage_assets.core import settings
from resources.embedding import PROVIDERS

MANAGED_HEADER = "# managed by assemblage: regenerated from the environment, edits are lost (remove this line to own the file)"
# What ensure_dagster_home wrote before this module existed: also ours, upgraded in place.
LEGACY_PLACEHOLDER = "# Dagster instance of Assemblage: default local storage in this folder.\n"

DEFAULT_MAX_CONCURRENT_RUNS = 4  # a 2-4 core machine; each run is a process deriving with all cores
DEFAULT_EMBED_RUNS = 1  # one model in memory at a time
DEFAULT_POOL_LIMIT = 4
DEFAULT_GPU_CONCURRENCY = 1
DEFAULT_PAID_CONCURRENCY = 2
DEFAULT_START_TIMEOUT_SECONDS = 180  # Dagster's default: a run worker that never came up
DEFAULT_MAX_RUNTIME_SECONDS = 12 * 3600  # a shard run that long is stuck (0: no limit)
DEFAULT_MONITORING_INTERVAL = 30  # seconds between the daemon's checks (Dagster's default: 120)
DEFAULT_FREE_SLOTS_SECONDS = 300


def storage_env_var() -> str:
    """Name of the variable holding the external DSN, or "" for Dagster's local storage."""
    if settings.env_str("ASSEMBLAGE_DAGSTER_STORAGE") == "local":
        return ""
    if settings.env_str("DATABASE_URL"):
        return "DATABASE_URL"
    return "SUPABASE_DB_URL" if settings.env_str("SUPABASE_DB_URL") else ""


def pg_schema() -> str:
    return settings.env_str("DAGSTER_PG_SCHEMA", "dagster")


def pool_limits() -> dict[str, int]:
    """Slots per embedding provider's pool (the provider table of ``resources.embedding``): a paid
    API gets ``EMBED_PAID_CONCURRENCY``, the local model ``EMBED_GPU_CONCURRENCY``. Applied to the
    instance by ``sync_pool_limits``."""
    paid = settings.env_int("EMBED_PAID_CONCURRENCY", DEFAULT_PAID_CONCURRENCY)
    local = settings.env_int("EMBED_GPU_CONCURRENCY", DEFAULT_GPU_CONCURRENCY)
    return {provider.pool: paid if provider.paid else local for provider in PROVIDERS.values()}


def run_monitoring() -> dict[str, Any]:
    """The daemon's run monitoring. Runs are not resumed (``DefaultRunLauncher`` cannot): a dead
    worker's run is marked failed and the shard's next run (sensor, schedule, CLI) redoes it."""
    return {
        "enabled": settings.env_str("DAGSTER_RUN_MONITORING", "1").lower() not in ("0", "false", "no", "off"),
        "start_timeout_seconds": settings.env_int("DAGSTER_RUN_START_TIMEOUT_SECONDS", DEFAULT_START_TIMEOUT_SECONDS),
        "cancel_timeout_seconds": settings.env_int("DAGSTER_RUN_CANCEL_TIMEOUT_SECONDS", DEFAULT_START_TIMEOUT_SECONDS),
        "max_runtime_seconds": settings.env_int("DAGSTER_MAX_RUNTIME_SECONDS", DEFAULT_MAX_RUNTIME_SECONDS),
        "max_resume_run_attempts": 0,
        "poll_interval_seconds": settings.env_int("DAGSTER_RUN_MONITORING_INTERVAL_SECONDS", DEFAULT_MONITORING_INTERVAL),
        # pool slots a run still holds after it ended (a killed run) are freed after this long
        "free_slots_after_run_end_seconds": DEFAULT_FREE_SLOTS_SECONDS,
    }


def render_config() -> dict[str, Any]:
    """The instance config as a dict (secrets only as ``{env: NAME}`` references)."""
    config: dict[str, Any] = {}
    env_var = storage_env_var()
    if env_var:
        config["storage"] = {
            "custom": {
                "module": "assemblage_assets.platform.instance_storage",
                "class": "AssemblagePostgresStorage",
                "config": {"database_url": {"env": env_var}, "schema": pg_schema()},
            }
        }
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    # Run monitoring (issue 14, item 5): the daemon fails runs whose worker died (the launcher's
    # health check, platform/run_launcher.py), stuck STARTING or CANCELING, or past the maximum
    # runtime, so a killed run neither stays STARTED nor holds a queue or pool slot.
    config["run_launcher"] = {"module": "assemblage_assets.platform.run_launcher", "class": "AssemblageRunLauncher"}
    config["run_monitoring"] = run_monitoring()
    config["concurrency"] = {
        "runs": {
            "max_concurrent_runs": settings.env_int("DAGSTER_MAX_CONCURRENT_RUNS", DEFAULT_MAX_CONCURRENT_RUNS),
            "tag_concurrency_limits": [
                {
                    "key": STAGE_TAG,
                    "value": EMBED_STAGE,
                    "limit": settings.env_int("EMBED_MAX_CONCURRENT_RUNS", DEFAULT_EMBED_RUNS),
                }
            ],
        },
        # Run granularity: the queue holds a run until its pools have a free slot, so a run never
        # sits launched and blocked; in-process CLI runs are not throttled.
        "pools": {
            "granularity": "run",
            "default_limit": settings.env_int("DAGSTER_POOL_DEFAULT_LIMIT", DEFAULT_POOL_LIMIT),
        },
    }
    config["telemetry"] = {"enabled": False}
    config["nux"] = {"enabled": False}  # no newsletter/onboarding modal over the UI of an operated instance
    return config


def render_yaml() -> str:
    storage = f"Postgres ({storage_env_var()}), schema {pg_schema()}" if storage_env_var() else "local (DAGSTER_HOME)"
    body = yaml.safe_dump(render_config(), sort_keys=False, default_flow_style=False)
    return f"{MANAGED_HEADER}\n# storage: {storage}\n{body}"


def is_managed(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    return text.split("\n", 1)[0] == MANAGED_HEADER or text == LEGACY_PLACEHOLDER


def write_config(dagster_home: Path) -> bool:
    """(Re)write ``dagster_home/dagster.yaml`` if it is ours; returns whether it is ours."""
    path = dagster_home / "dagster.yaml"
    if not is_managed(path):
        print(f"assemblage: {path} is not managed by assemblage (no header line), leaving it as is", file=sys.stderr)
        return False
    text = render_yaml()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        # atomic, with a per-process temp name: concurrent commands and a webserver reading the
        # file never see half of it
        tmp = path.with_name(f".dagster.yaml.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return True


def sync_pool_limits(instance: Any) -> dict[str, int]:
    """Set the per-pool slot counts on ``instance`` where they differ; returns the limits."""
    limits = pool_limits()
    storage = instance.event_log_storage
    explicit = {p.name: p.limit for p in storage.get_pool_limits() if not p.from_default}
    for pool, limit in limits.items():
        if explicit.get(pool) != limit:
            storage.set_concurrency_slots(pool, limit)
    return limits

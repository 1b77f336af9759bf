"""``DAGSTER_HOME`` of the project: where it is and its rendered ``dagster.yaml``.

Lives in ``platform`` rather than ``core.settings`` because rendering the yaml needs the
instance config, and settings must stay importable by everything below it.
"""

from __future__ import annotations

import os
from pathlib import Path

from assemblage_assets.core import settings
from assemblage_assets.platform import instance_config


def ensure_dagster_home(sync_pools: bool = True) -> Path:
    """Point ``DAGSTER_HOME`` at the project state folder unless the user set it, and render its
    ``dagster.yaml`` (storage, run queue, concurrency) unless the user owns that file.

    ``sync_pools`` also writes the per-pool slot limits into the instance storage (they live
    there, not in the yaml).
    """
    configured = settings.env_str("DAGSTER_HOME")
    path = Path(configured) if configured else settings.Paths.from_env().dagster_home
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path)
    if instance_config.write_config(path) and sync_pools:
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            instance_config.sync_pool_limits(instance)
    return path

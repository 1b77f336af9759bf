"""``DAGSTER_HOME`` of the project: where it is, its rendered ``dagster.yaml`` and its storage.

Lives in ``platform`` rather than ``core.settings`` because rendering the yaml needs the
instance config, and settings must stay importable by everything below it.

Creating the folder is serialised between processes (a file lock): two commands started at once
on a fresh folder used to race on Dagster's SQLite schema (``UNIQUE constraint failed``, two
alembic heads) and leave it unusable. A start killed halfway leaves no marker file; the next one
finds the local storage unreadable, sets it aside (renamed, never deleted) and creates it anew.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from assemblage_assets.core import settings
from assemblage_assets.platform import instance_config

INIT_LOCK = ".assemblage-init.lock"
INIT_DONE = ".assemblage-initialized"  # written once the storage opened and the pool limits are set
LOCAL_STORAGE_DIRS = ("history", "schedules", "storage")  # Dagster's SQLite storage in DAGSTER_HOME


def ensure_dagster_home(sync_pools: bool = True) -> Path:
    """Point ``DAGSTER_HOME`` at the project state folder unless the user set it, and render its
    ``dagster.yaml`` (storage, run queue, concurrency) unless the user owns that file.

    ``sync_pools`` also opens the instance (creating its storage) and writes the per-pool slot
    limits into it (they live there, not in the yaml).
    """
    configured = settings.env_str("DAGSTER_HOME")
    path = Path(configured) if configured else settings.Paths.from_env().dagster_home
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(path)
    with _init_lock(path):
        if instance_config.write_config(path) and sync_pools:
            _initialise(path)
    return path


@contextmanager
def _init_lock(path: Path) -> Iterator[None]:
    with open(path / INIT_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, also if we are killed
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _initialise(path: Path) -> None:
    """Open the instance (creating or migrating its storage) and set the pool limits."""
    try:
        _open_and_sync()
    except Exception as exc:  # noqa: BLE001 - whatever a half-written SQLite schema raises
        if (path / INIT_DONE).exists() or instance_config.storage_env_var() or not _set_aside(path):
            raise
        print(f"assemblage: {path} was half-initialised ({type(exc).__name__}); its local storage was "
              "set aside (*.incomplete-*) and created again", file=sys.stderr)
        _open_and_sync()
    (path / INIT_DONE).touch()


def _open_and_sync() -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.get_runs(limit=1)  # the run storage is readable and at its schema's head
        instance_config.sync_pool_limits(instance)


def _set_aside(path: Path) -> bool:
    """Rename the local storage folders out of the way; returns whether there were any."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = False
    for name in LOCAL_STORAGE_DIRS:
        if (path / name).exists():
            (path / name).rename(path / f"{name}.incomplete-{stamp}")
            moved = True
    return moved

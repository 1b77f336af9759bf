"""Creating DAGSTER_HOME (its dagster.yaml, its storage, the pool limits) is serialised between
processes, and a folder left half-initialised by a killed start is finished, not left broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COLD_START = "from assemblage_assets.platform.dagster_home import ensure_dagster_home; ensure_dagster_home()"
OPEN_INSTANCE = "import dagster as dg; print(len(dg.DagsterInstance.get().get_runs(limit=1)))"


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "ASSEMBLAGE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    for name in ("DATABASE_URL", "SUPABASE_DB_URL"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("round_", range(2))
def test_three_cold_starts_at_once_all_succeed(tmp_path: Path, round_: int) -> None:
    env = _env(tmp_path / "state")
    procs = [subprocess.Popen([sys.executable, "-c", COLD_START], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    out = subprocess.run([sys.executable, "-c", OPEN_INSTANCE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


def test_a_half_initialised_folder_is_set_aside_and_finished(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    history = tmp_path / "state" / "dagster" / "history"
    history.mkdir(parents=True)
    (history / "runs.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)  # a start killed mid-create
    done = subprocess.run([sys.executable, "-c", COLD_START], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "half-initialised" in done.stderr
    assert [p.name.split(".")[0] for p in (tmp_path / "state" / "dagster").glob("history.incomplete-*")] == ["history"]
    out = subprocess.run([sys.executable, "-c", OPEN_INSTANCE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


def test_a_working_folder_is_never_set_aside(tmp_path: Path) -> None:
    """An existing instance from before the marker file existed opens fine: it is kept."""
    env = _env(tmp_path / "state")
    assert subprocess.run([sys.executable, "-c", COLD_START], env=env, timeout=120).returncode == 0
    (tmp_path / "state" / "dagster" / ".assemblage-initialized").unlink()
    assert subprocess.run([sys.executable, "-c", COLD_START], env=env, timeout=120).returncode == 0
    assert not list((tmp_path / "state" / "dagster").glob("*.incomplete-*"))

"""Runs the CLI launches carry the launching process; a later command marks the runs of a killed
process failed (they would otherwise stay STARTED for ever), and refuses to start a second run of
a shard whose run is really still going."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from assemblage_assets.cli.launch import LAUNCHER_HOST_TAG, LAUNCHER_PID_TAG, materialize_shards
from assemblage_assets.constants import INGEST_SHARD_JOB
from assemblage_assets.dev.sample_data import make_photo, write_sample_tree
from assemblage_assets.platform.dagster_home import ensure_dagster_home


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _started_run(instance: dg.DagsterInstance, shard: str, pid: int) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(
        job_name=INGEST_SHARD_JOB, run_id=run_id, status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": shard, LAUNCHER_PID_TAG: str(pid), LAUNCHER_HOST_TAG: socket.gethostname()},
    ))
    return run_id


@pytest.mark.timeout(300)
def test_dead_runs_are_failed_and_live_ones_are_not_run_twice(assemblage_env: dict[str, str]) -> None:
    images = Path(assemblage_env["IMAGES_DIR"])
    write_sample_tree(images, photos_per_shard=3)
    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    materialize_shards(INGEST_SHARD_JOB, images, ["misc_scans"])  # registers the partitions
    # misc_scans is settled now, so the CLI would skip it as idle; a new file gives it work, and
    # the CLI must then refuse to start it because of the live run below
    make_photo(160, 120, seed=901).save(images / "misc_scans" / "new-since.jpg", "JPEG")
    killed = _started_run(instance, "street-2019", _dead_pid())
    running = _started_run(instance, "misc_scans", os.getpid())  # this test process is alive
    before = {r.run_id for r in instance.get_runs()}

    cli = subprocess.run(
        [str(Path(sys.executable).parent / "assemblage"), "ingest", "--images-dir", str(images),
         "--shard", "street-2019", "--shard", "misc_scans"],
        env={**os.environ, **assemblage_env}, capture_output=True, text=True, timeout=240,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr  # one shard refused
    assert "marked 1 run(s) of killed assemblage processes as failed" in cli.stdout
    assert "misc_scans: FAILED: a run of this partition is already queued or in progress" in cli.stdout
    assert "1/2 shard run(s) succeeded" in cli.stdout
    assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED
    new = [r for r in instance.get_runs() if r.run_id not in before]
    assert [r.tags["dagster/partition"] for r in new] == ["street-2019"]  # nothing launched for misc_scans
    assert new[0].status == dg.DagsterRunStatus.SUCCESS
    # the CLI's runs are tagged with the process that ran them (now gone: a later command fails it if stuck)
    assert new[0].tags[LAUNCHER_HOST_TAG] == socket.gethostname()
    assert new[0].tags[LAUNCHER_PID_TAG].isdigit() and new[0].tags[LAUNCHER_PID_TAG] != str(os.getpid())

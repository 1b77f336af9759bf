"""Run monitoring in the managed dagster.yaml (issue 14, item 5): the rendered config turns it
on with our run launcher, and what it really does: a run whose worker process was killed is
marked failed by Dagster's own monitoring code, a run whose worker lives is left alone; and,
end to end, the daemon fails a launched run whose worker got SIGKILLed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml
from dagster._core.events import EngineEventData
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from assemblage_assets.platform import instance_config
from assemblage_assets.platform.run_launcher import AssemblageRunLauncher


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    home = tmp_path / "dagster"
    home.mkdir()
    for name in ("DATABASE_URL", "SUPABASE_DB_URL"):
        monkeypatch.delenv(name, raising=False)  # local storage in the folder
    monkeypatch.setenv("DAGSTER_RUN_MONITORING_INTERVAL_SECONDS", "1")
    assert instance_config.write_config(home)
    return dg.DagsterInstance.from_config(str(home))


def test_the_managed_config_enables_run_monitoring_with_a_launcher_that_checks_workers(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    rendered = yaml.safe_load((tmp_path / "dagster" / "dagster.yaml").read_text())
    assert rendered["run_monitoring"] == {
        "enabled": True, "start_timeout_seconds": 180, "cancel_timeout_seconds": 180,
        "max_runtime_seconds": 43200, "max_resume_run_attempts": 0, "poll_interval_seconds": 1,
        "free_slots_after_run_end_seconds": 300,
    }
    assert instance.run_monitoring_enabled and instance.run_monitoring_poll_interval_seconds == 1
    assert isinstance(instance.run_launcher, AssemblageRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health


def test_monitoring_fails_a_run_whose_worker_was_killed_and_leaves_a_live_one(instance: dg.DagsterInstance) -> None:
    workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    runs = []
    try:
        for worker in workers:
            run = create_run_for_test(instance, job_name="ingest_shard_job", status=dg.DagsterRunStatus.STARTED)
            instance.report_engine_event(f"Started process for run (pid: {worker.pid}).", run,
                                         EngineEventData.in_process(worker.pid))
            runs.append(run)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        for run in runs:
            monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), logging.getLogger("test"))
        statuses = [instance.get_run_by_id(run.run_id).status for run in runs]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(10)
    assert statuses == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.STARTED]
    messages = [e.message for e in instance.all_logs(runs[0].run_id) if e.message]
    assert any("is gone (killed or crashed)" in m for m in messages)


SLEEPY_DEFS = """
import time
import dagster as dg

@dg.op
def nap():
    time.sleep(300)

@dg.job(executor_def=dg.in_process_executor)  # one worker process, no step subprocess left behind
def sleepy_job():
    nap()

defs = dg.Definitions(jobs=[sleepy_job])
"""


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:g}s")


def test_the_daemon_fails_a_launched_run_whose_worker_is_killed(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    """The real path: QueuedRunCoordinator -> daemon -> our launcher -> code server -> worker;
    SIGKILL the worker; the daemon's monitoring marks the run failed (it would stay STARTED)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "sleepy_defs.py").write_text(SLEEPY_DEFS)
    (code / "workspace.yaml").write_text(textwrap.dedent("""
        load_from:
          - python_file: sleepy_defs.py
    """))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")}
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        submit = subprocess.run(
            [sys.executable, "-m", "dagster", "job", "launch", "-w", "workspace.yaml", "-j", "sleepy_job"],
            cwd=code, env=env, capture_output=True, text=True, timeout=120,
        )
        assert submit.returncode == 0, submit.stderr[-2000:]
        run = _wait_for(lambda: next(iter(instance.get_runs()), None), 30, "the submitted run")

        def worker_pid() -> int | None:
            for entry in instance.all_logs(run.run_id):
                if entry.message and entry.message.startswith("Started process for run (pid: "):
                    return int(entry.message.split("pid: ")[1].split(")")[0])
            return None

        pid = _wait_for(worker_pid, 120, "the run worker")
        _wait_for(lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED, 60, "STARTED")
        os.kill(pid, signal.SIGKILL)
        status = _wait_for(
            lambda: (s := instance.get_run_by_id(run.run_id).status) in (dg.DagsterRunStatus.FAILURE,) and s,
            120, "the run marked failed",
        )
    finally:
        # the daemon and what it started (its code server), by pid
        spawned = psutil.Process(daemon.pid).children(recursive=True)
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        for child in spawned:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    assert status == dg.DagsterRunStatus.FAILURE

"""The run launcher of the managed instance: Dagster's ``DefaultRunLauncher`` that can also tell
run monitoring whether a run's worker process still lives.

``DefaultRunLauncher`` starts each run as a process of the local code server but cannot answer
run monitoring's health check, so a run whose worker was killed (kill -9, OOM, a reboot) stays
``STARTED`` forever: monitoring only fails runs stuck ``STARTING`` or past a maximum runtime.
The worker logs "Started process for run (pid: N)" when it starts; this launcher looks that
process up. Gone (or a zombie, or a newer process reusing the pid) means the worker died, and
the daemon's run monitoring marks the run failed, freeing its queue and pool slots. When the
worker cannot be checked from here (no pid logged yet, a code server on another host) it
answers RUNNING: a run is never failed on a guess.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import dagster as dg
import psutil

from assemblage_assets.platform.dagster_private import CheckRunHealthResult, WorkerStatus

STARTED_PROCESS = "Started process for run (pid: "
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "", None}
GRPC_INFO_TAG = ".dagster/grpc_info"  # dagster._core.storage.tags.GRPC_INFO_TAG


class AssemblageRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` plus a run worker health check (local workers, by pid)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        return worker_health(self._instance, run)


def _local(run: dg.DagsterRun) -> bool:
    """Whether the run's worker runs on this machine (a code server reached over a socket or
    loopback, as ``dagster dev`` and the managed workspace start them)."""
    raw = run.tags.get(GRPC_INFO_TAG)
    if not raw:
        return True  # no code server named: launched by this instance's own processes
    try:
        info: dict[str, Any] = json.loads(raw)
    except ValueError:
        return False
    return bool(info.get("socket")) or info.get("host") in _LOCAL_HOSTS or info.get("host") == socket.gethostname()


def _worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, time) of the run worker's latest "Started process" event, if it logged one."""
    found = None
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        message = entry.dagster_event.message if entry.dagster_event else ""
        if message and message.startswith(STARTED_PROCESS):
            try:
                found = (int(message[len(STARTED_PROCESS):].split(")")[0]), float(entry.timestamp))
            except ValueError:
                continue
    return found


def worker_health(instance: dg.DagsterInstance, run: dg.DagsterRun) -> CheckRunHealthResult:
    """RUNNING unless the run's local worker process is known to be gone (then FAILED)."""
    if not _local(run):
        return CheckRunHealthResult(WorkerStatus.RUNNING, "worker on another host: not checked from here")
    worker = _worker(instance, run.run_id)
    if worker is None:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker process logged yet")
    pid, started = worker
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started + 1.0
    except psutil.NoSuchProcess:
        alive = False
    except psutil.Error:
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker process {pid} cannot be inspected")
    if alive:
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker process {pid} is running")
    return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)")

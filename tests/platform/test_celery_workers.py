"""``distributed_shard_job`` for real: a loopback redis-server, two Celery worker processes (one
on the CPU queue, one on the GPU queue) and the job launched through the Dagster CLI on one shard
of the sample tree. Asserts the run, the rows and vectors in Postgres, and which worker ran which
step (dagster-celery records the worker's hostname in an engine event of each step)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from support.embed_support import query, tiny_clip

from assemblage_assets.dev.sample_data import write_sample_tree
from assemblage_assets.partitions import IMAGE_SHARDS
from assemblage_assets.platform.distributed import JOB_NAME, celery_available

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHARD = "street-2019"
START_TIMEOUT = 90  # seconds for redis / a worker to come up
RUN_TIMEOUT = 420  # under pytest-timeout's 600 s


def _require(available: bool, reason: str) -> None:
    """Skip without redis/celery, unless CI demands them (ASSEMBLAGE_REQUIRE_REDIS=1)."""
    if available:
        return
    if os.environ.get("ASSEMBLAGE_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason}, and ASSEMBLAGE_REQUIRE_REDIS=1")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (the worker's step subprocesses included), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(predicate, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"{what} did not start (exit {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    _require(server is not None, "redis-server is not installed (apt-get install redis-server)")
    _require(celery_available(), "dagster-celery is not installed (pip install 'assemblage[celery]')")
    import redis

    port = _free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    log = workdir / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

    def pong() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        _wait_for(pong, "redis-server", proc, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        _stop(proc)


@pytest.fixture
def worker_env(redis_url: str, assemblage_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the launching process and both workers share: instance, database, images, broker, model."""
    env = dict(os.environ)
    env.update(assemblage_env)
    env.update({
        "CELERY_BROKER_URL": redis_url,
        "ASSEMBLAGE_CPU_QUEUE": "cpu",
        "ASSEMBLAGE_GPU_QUEUE": "gpu",
        "EMBEDDING_PROVIDER": "local_clip",
        "CLIP_MODEL": str(tiny_clip(tmp_path_factory.mktemp("models"))),
        "DERIVE_WORKERS": "2",  # a process pool inside the worker's step, as in production
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    env.pop("CELERY_BACKEND_URL", None)
    return env


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """One worker per queue, each a solo-pool Celery worker with its own node name."""
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for queue in ("cpu", "gpu"):
            log = tmp_path / f"worker-{queue}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [str(BIN / "celery"), "-A", "assemblage_assets.platform.celery_app", "worker", "-Q", queue,
                     "-n", f"{queue}@%h", "--pool", "solo", "--prefetch-multiplier", "1", "--loglevel", "INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=REPO_ROOT, env=worker_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            started[queue] = (proc, log)
        for queue, (proc, log) in started.items():
            _wait_for(lambda log=log: " ready." in log.read_text(errors="replace"), f"{queue} worker", proc, log)
        yield started
    finally:
        for proc, _ in started.values():
            _stop(proc)


def _succeeded_tasks(workers: dict[str, tuple[subprocess.Popen, Path]], expected: dict[str, int],
                     timeout: float = 30.0) -> dict[str, int]:
    """Tasks each worker logged as succeeded. A worker stores a task's result before it logs the
    line, so the run can end first: read until ``expected`` shows up or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        done = {q: len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] succeeded", log.read_text(errors="replace")))
                for q, (_, log) in workers.items()}
        if done == expected or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def test_shard_stages_run_on_cpu_and_gpu_workers(worker_env: dict[str, str], workers, pg_dsn: str) -> None:
    images = Path(worker_env["IMAGES_DIR"])
    tree = write_sample_tree(images, photos_per_shard=3, photo_size=(320, 240))
    expected = sorted(p for p in tree.ok if p.startswith(f"{SHARD}/"))
    assert expected
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, [SHARD])

    launched = subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "assemblage_assets.definitions", "-j", JOB_NAME,
         "--tags", json.dumps({"dagster/partition": SHARD})],
        cwd=REPO_ROOT, env=worker_env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    logs = "\n".join(f"--- {q} worker\n{log.read_text(errors='replace')[-3000:]}" for q, (_, log) in workers.items())
    assert launched.returncode == 0, f"{launched.stdout[-3000:]}\n{launched.stderr[-5000:]}\n{logs}"

    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == SHARD
        # dagster-celery's task reports "Executing steps ... in celery worker" with the worker's node name.
        ran_on = {
            e.step_key: e.dagster_event.engine_event_data.metadata["Celery worker"].value
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if "Celery worker" in e.dagster_event.engine_event_data.metadata
        }
        materialized = {
            e.dagster_event.asset_key.to_user_string()
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        }
    assert materialized == {"raw_files", "derivatives", "duplicates", "r2_objects", "embeddings"}
    assert set(ran_on) == {"raw_files", "derivatives", "duplicates", "r2_objects", "embeddings"}
    assert ran_on["embeddings"].startswith("gpu@")
    for step in ("raw_files", "derivatives", "duplicates", "r2_objects"):
        assert ran_on[step].startswith("cpu@"), (step, ran_on)
    # and the workers' own logs agree: four step tasks on the CPU worker, one on the GPU worker
    assert _succeeded_tasks(workers, {"cpu": 4, "gpu": 1}) == {"cpu": 4, "gpu": 1}

    rows = query(pg_dsn, "SELECT local_path, status FROM processing_log WHERE shard = %s ORDER BY local_path", SHARD)
    assert len(rows) == len(expected)
    assert {r["status"] for r in rows} == {"indexed"}
    vectors = query(
        pg_dsn,
        """SELECT e.model, e.dim, vector_dims(e.embedding) AS n FROM image_embeddings e
           JOIN processing_log p ON p.image_id = e.image_id WHERE p.shard = %s""",
        SHARD,
    )
    assert len(vectors) == len(expected)
    assert {(v["model"], v["dim"], v["n"]) for v in vectors} == {("tiny-clip", 16, 16)}

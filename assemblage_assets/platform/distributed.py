"""``distributed_shard_job``: the five shard stages run step by step on Celery workers.

The celery executor (dagster-celery, Redis as broker and result backend) puts each step on the
queue named by its ``dagster-celery/queue`` op tag (see ``celery_queues.py``): ``embeddings`` on the
GPU queue, ``raw_files``/``derivatives``/``duplicates``/``r2_objects`` on the CPU queue. Workers import
``assemblage_assets.platform.celery_app`` and execute a step against the shared Dagster instance, the
shared Postgres and the shared object store; see docs/distributed.md.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import dagster as dg

from assemblage_assets.constants import DISTRIBUTED_SHARD_JOB
from assemblage_assets.platform.celery_queues import cpu_queue

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
JOB_NAME = DISTRIBUTED_SHARD_JOB
SHARD_STAGES = ("raw_files", "derivatives", "duplicates", "r2_objects", "embeddings")


def broker_url() -> str:
    return os.environ.get("CELERY_BROKER_URL", "").strip() or DEFAULT_BROKER_URL


def backend_url() -> str:
    """Where workers post step results; the broker's Redis unless ``CELERY_BACKEND_URL`` says otherwise."""
    return os.environ.get("CELERY_BACKEND_URL", "").strip() or broker_url()


def executor_config() -> dict[str, Any]:
    """The celery executor's config, shared by the launching process and the workers' app."""
    return {
        "broker": broker_url(),
        "backend": backend_url(),
        # Steps without a queue tag (none today) go to the CPU workers, not to dagster's "dagster" queue.
        "config_source": {"task_default_queue": cpu_queue()},
    }


def celery_available() -> bool:
    """dagster-celery is an optional extra (``pip install 'assemblage[celery]'``)."""
    return importlib.util.find_spec("dagster_celery") is not None


def build_distributed_shard_job() -> dg.UnresolvedAssetJobDefinition:
    from dagster_celery import celery_executor

    return dg.define_asset_job(
        name=JOB_NAME,
        selection=dg.AssetSelection.assets(*SHARD_STAGES),
        executor_def=celery_executor.configured(executor_config(), name="assemblage_celery"),
        description="Scan, derive, publish and embed a shard with each step on a Celery worker: "
        "embeddings on the GPU queue, the other stages on the CPU queue (docs/distributed.md).",
    )


def distributed_defs() -> dg.Definitions:
    """The job when dagster-celery is installed; nothing otherwise (the rest runs without it)."""
    if not celery_available():
        return dg.Definitions()
    return dg.Definitions(jobs=[build_distributed_shard_job()])

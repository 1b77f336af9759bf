"""Celery queue op tags of the shard stages: embeddings on GPU workers, the rest on CPU workers.

Only ``distributed_shard_job`` (celery executor) routes by these tags; every other executor
ignores them. Queue names are read when the definitions load, so the launching process and the
workers must agree on ``ASSEMBLAGE_CPU_QUEUE`` / ``ASSEMBLAGE_GPU_QUEUE``.
"""

from __future__ import annotations

import os

QUEUE_TAG = "dagster-celery/queue"  # read by dagster_celery's execution loop from the step's tags
DEFAULT_CPU_QUEUE = "cpu"
DEFAULT_GPU_QUEUE = "gpu"


def cpu_queue() -> str:
    return os.environ.get("ASSEMBLAGE_CPU_QUEUE", "").strip() or DEFAULT_CPU_QUEUE


def gpu_queue() -> str:
    return os.environ.get("ASSEMBLAGE_GPU_QUEUE", "").strip() or DEFAULT_GPU_QUEUE


def cpu_op_tags() -> dict[str, str]:
    """Op tags sending a step to the CPU workers (scan, derive, publish)."""
    return {QUEUE_TAG: cpu_queue()}


def gpu_op_tags() -> dict[str, str]:
    """Op tags sending a step to the GPU workers (embeddings)."""
    return {QUEUE_TAG: gpu_queue()}

"""API requests counted by operation: how sources, queues and object stores report what they
cost and how tests and benchmarks check that a quiet tick or a rerun sends nothing."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class RequestCounts:
    """Thread-safe counts of requests by operation name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, operation: str, n: int = 1) -> None:
        with self._lock:
            self._counts[operation] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def count_boto3_calls(self, client: Any, service: str) -> Any:
        """Count every API call ``client`` (a boto3 client of ``service``) makes, retries
        excluded, by operation name (``ListObjectsV2``, ``ReceiveMessage``...). Returns it."""
        client.meta.events.register(f"before-call.{service}", lambda model, **_: self.add(model.name))
        return client

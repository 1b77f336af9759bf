"""What a stage did to a shard (counts, bytes, time, a bounded list of failures) and the
progress callback stages report through; shared by every area and shown by the CLI and Dagster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[str], None]
MAX_REPORTED_FAILURES = 50


@dataclass
class StageReport:
    """What one stage did to one shard; becomes Dagster metadata and CLI output."""

    counts: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, message)

    def add_failure(self, path: str, kind: str | None, message: str | None) -> None:
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append((path, kind or "error", message or ""))

    def per_second(self, key: str) -> float:
        return round(self.counts[key] / self.seconds, 2) if self.seconds > 0 else 0.0

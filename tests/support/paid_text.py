"""Helpers for the tests of paid one-off calls (``embeddings/text_calls.py``): another "run"
filling the provider's shared rate-limit window through the same limiter table, and what the
table and the cost log hold afterwards."""

from __future__ import annotations

import time
from typing import Any

from assemblage_assets.embeddings.rate_limit import RateLimiter
from support.embed_support import query

WINDOW_SECONDS = 60  # the limiter's window (MAX_EMBEDDING_CALLS_PER_MIN)


def fill_window(dsn: str, provider: str, slots: int, *, room_seconds: float = 25.0) -> None:
    """Another run takes ``slots`` slots of the current minute. When under ``room_seconds`` of
    the minute remain, first wait for the next one, so the test's calls all fall in this window
    (the embedded server shares this machine's clock)."""
    left = query(dsn, "SELECT %s - mod(extract(epoch FROM clock_timestamp())::numeric, %s)::float AS s",
                 WINDOW_SECONDS, WINDOW_SECONDS)[0]["s"]
    if left < room_seconds:
        time.sleep(left + 0.2)
    with RateLimiter(dsn, provider, slots) as other_run:
        assert other_run.try_acquire(slots) == 0.0


def window_calls(dsn: str, provider: str) -> int:
    """Slots taken in the current window (the one ``fill_window`` filled)."""
    rows = query(dsn, """SELECT calls FROM embedding_rate_limit WHERE provider = %s
                         ORDER BY window_start DESC LIMIT 1""", provider)
    return rows[0]["calls"] if rows else 0


def usage_rows(dsn: str, purpose: str) -> list[dict[str, Any]]:
    return query(dsn, """SELECT provider, model, purpose, requests, ok, owner, run_id, image_id
                         FROM embedding_usage_log WHERE purpose = %s ORDER BY id""", purpose)

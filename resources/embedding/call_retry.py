"""Retries inside one paid call: a 5xx, a reset connection or an unreadable reply is usually gone
a second later, so it is tried again a few times with jittered exponential backoff before the
attempt counts as failed (and the retry queue's minute-scale backoff takes over).

Only requests that are safe to repeat go through here: a poll, or a create whose failure the
provider refused before doing any work (or that the caller has first looked up, see
``replicate``). 429s are the stage's (a provider-wide pause for ``Retry-After``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from resources.embedding.types import TransientProviderError

T = TypeVar("T")

DEFAULT_CALL_ATTEMPTS = 4  # PAID_CALL_ATTEMPTS: tries of one request before the attempt fails
DEFAULT_RETRY_BASE_SECONDS = 0.5  # PAID_RETRY_BASE_SECONDS: first backoff; doubles, capped
MAX_RETRY_SECONDS = 8.0


def backoff(attempt: int, base: float, cap: float = MAX_RETRY_SECONDS) -> float:
    """Full jitter: uniform in [base/2, base * 2**(attempt-1)] capped, so concurrent callers
    that failed together do not come back together."""
    top = min(cap, base * 2 ** max(0, attempt - 1))
    return random.uniform(min(base / 2, top), top)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int,
    base_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    before_retry: Callable[[TransientProviderError], None] | None = None,
) -> T:
    """``fn()``, tried up to ``attempts`` times while it raises ``TransientProviderError``; the
    last error propagates. ``before_retry`` runs before each new try (to look a call up)."""
    attempt = 1
    while True:
        try:
            return fn()
        except TransientProviderError as exc:
            if attempt >= max(1, attempts):
                if attempt > 1:
                    exc.args = (f"{exc.args[0]} (after {attempt} tries)",)
                raise
            sleep(backoff(attempt, base_seconds))
            attempt += 1
            if before_retry is not None:
                before_retry(exc)

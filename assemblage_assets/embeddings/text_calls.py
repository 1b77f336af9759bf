"""Paid calls outside the shard stages: text search (CLI and API), search by an image file or
upload, ``provider-test`` and the zero-shot prompt vocabulary.

Each takes its slots of the provider's shared limiter (``rate_limit``: the counters and the 429
pause the ingest runs use, so a burst of searches never pushes a provider past the limit they
share), sends the request and writes its cost row (``usage_log``) once, with the billable
requests behind it. A query waits a short budget (``TEXT_CALL_MAX_WAIT_SECONDS``), not the
stages' 90 s: past it, ``CallRefused`` says when to try again (the API answers 429 with
``Retry-After``). Free (local) providers go straight through.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeAlias, TypeVar

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

from assemblage_assets.core import settings
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.embeddings.usage_log import UsageRow, log_usage
from resources.embedding import EmbeddingResource
from resources.embedding.types import (
    EmbeddingError,
    EmbedItem,
    EmbedOutcome,
    ProviderConfigError,
    RateLimitedError,
    Usage,
)

DEFAULT_MAX_WAIT_SECONDS = 5.0  # an interactive query: seconds, not the stages' 90
DEFAULT_PAUSE_SECONDS = 30.0  # a 429 without Retry-After pauses the provider this long
MAX_429 = 3

T = TypeVar("T")
# Where cost rows go: a connection, or a source of one (a pool's ``connection``) taken only for
# the write, so a server's pool is not held for the length of a paid call and its wait.
Db: TypeAlias = psycopg.Connection | Callable[[], AbstractContextManager[psycopg.Connection]]


class CallRefused(RateLimitedError):
    """No slot of the provider's shared limit within the wait budget (the window is full, or the
    provider answered 429 and everyone is paused). Nothing was sent or billed; ``retry_after``
    is the seconds until a slot may be free."""


def max_wait_seconds() -> float:
    """``TEXT_CALL_MAX_WAIT_SECONDS``: how long a query waits for a slot of the shared limit."""
    return max(0.0, settings.env_float("TEXT_CALL_MAX_WAIT_SECONDS", DEFAULT_MAX_WAIT_SECONDS))


def embed_texts(
    conn: Db, provider: EmbeddingResource, texts: Sequence[str], *, purpose: str = "text",
    run_id: str | None = None, dsn: str = "", limiter: RateLimiter | None = None, max_wait: float | None = None,
) -> np.ndarray:
    """Vectors of ``texts`` from ``provider``; a paid provider's requests go through the shared
    limit (texts split so each call's requests fit a window) and each call is logged on ``conn``.
    Raises ``CallRefused`` when no slot comes within ``max_wait`` (default ``max_wait_seconds()``)."""
    if not provider.paid:
        return provider.embed_texts(list(texts))[0]
    found = []
    with _Gate(conn, provider, purpose, run_id, dsn, limiter, max_wait) as gate:
        for chunk in _chunks(provider, list(texts)):
            vectors, _ = gate.send(provider.text_requests(len(chunk)), lambda chunk=chunk: provider.embed_texts(chunk),
                                   lambda result: result[1])
            found.append(np.asarray(vectors, dtype=np.float32))
    return np.concatenate(found) if found else np.zeros((0, provider.dim), dtype=np.float32)


def embed_image(
    conn: Db, provider: EmbeddingResource, item: EmbedItem, *, purpose: str,
    run_id: str | None = None, dsn: str = "", limiter: RateLimiter | None = None, max_wait: float | None = None,
) -> EmbedOutcome:
    """One image outside a shard (``provider-test``, search by an image file or upload), through
    the shared limit like ``embed_texts``: it takes the slots the provider says it costs."""
    if not provider.paid:
        return provider.embed_image(item)
    with _Gate(conn, provider, purpose, run_id, dsn, limiter, max_wait) as gate:
        return gate.send(provider.billable_requests(item), lambda: provider.embed_image(item),
                         lambda outcome: outcome.usage)


def _chunks(provider: EmbeddingResource, texts: list[str]) -> Iterator[list[str]]:
    """The texts in calls that each fit one window of the limit (Replicate: a prediction per text)."""
    per_window = provider.max_calls_per_min
    size = len(texts)
    if per_window > 0 and provider.text_requests(len(texts)) > per_window:
        size = max(1, per_window // max(1, provider.text_requests(1)))
    for start in range(0, len(texts), max(1, size)):
        yield texts[start:start + size]


def _dsn_of(conn: psycopg.Connection) -> str:
    return make_conninfo(conn.info.dsn, password=conn.info.password) if conn.info.password else conn.info.dsn


class _Gate:
    """One provider's slots, 429 pauses and cost rows for the calls of one operation."""

    def __init__(self, conn: Db, provider: EmbeddingResource, purpose: str, run_id: str | None,
                 dsn: str, limiter: RateLimiter | None, max_wait: float | None) -> None:
        self.conn, self.provider, self.purpose, self.run_id = conn, provider, purpose, run_id
        self.owned = limiter is None
        if limiter is None and not dsn and not isinstance(conn, psycopg.Connection):
            raise ValueError("a connection source needs a limiter or a dsn")
        self.limiter = limiter or RateLimiter(dsn or _dsn_of(conn), provider.provider_name, provider.max_calls_per_min)
        self.max_wait = max_wait_seconds() if max_wait is None else max_wait
        self.deadline = time.monotonic() + self.max_wait

    def __enter__(self) -> _Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.limiter.close()

    def send(self, slots: int, call: Callable[[], T], usage_of: Callable[[T], Usage | None]) -> T:
        throttled = 0
        while True:
            self._take(slots)
            try:
                result = call()
            except RateLimitedError as exc:
                self._log(exc.usage, ok=False)  # a part paid before the 429 (an OpenAI caption)
                # refused, not billed: every caller of the provider waits for its Retry-After
                self.limiter.pause(exc.retry_after if exc.retry_after is not None else DEFAULT_PAUSE_SECONDS, str(exc))
                throttled += 1
                if throttled >= MAX_429:
                    raise CallRefused(f"{self.provider.provider_name} answered 429 {throttled} times: {exc}",
                                      exc.retry_after or DEFAULT_PAUSE_SECONDS) from None
                continue
            except EmbeddingError as exc:
                self._log(exc.usage, ok=False)  # paid, but unusable
                raise
            self._log(usage_of(result), ok=True)
            return result

    def _take(self, slots: int) -> None:
        name, per_window = self.provider.provider_name, self.limiter.per_window
        if 0 < per_window < slots:
            raise ProviderConfigError(f"MAX_EMBEDDING_CALLS_PER_MIN={per_window} is below the {slots} billable "
                                      f"requests of this {name} call: set it to {slots} or more (0: no limit)")
        while True:
            wait = self.limiter.try_acquire(slots)
            if wait == 0.0:
                return
            wait += random.uniform(0, 0.25)  # spread the herd at the window edge
            if time.monotonic() + wait > self.deadline:
                limit = f"{per_window} requests/min (MAX_EMBEDDING_CALLS_PER_MIN)" if per_window > 0 else "no limit set"
                raise CallRefused(
                    f"{name} is busy: no call slot within {self.max_wait:g}s (TEXT_CALL_MAX_WAIT_SECONDS); its shared "
                    f"limit ({limit}) is taken by running jobs, or it asked everyone to pause after a 429. "
                    f"Nothing was sent; try again in {math.ceil(wait)}s", wait,
                )
            self.limiter.waited += wait
            self.limiter.sleep(wait)

    def _log(self, usage: Usage | None, *, ok: bool) -> None:
        if usage is None:
            return
        rows = [UsageRow(self.provider.provider_name, self.provider.model_id, None, usage, purpose=self.purpose,
                         ok=ok, run_id=self.run_id, owner=settings.env_str("DEFAULT_OWNER") or None)]
        if isinstance(self.conn, psycopg.Connection):
            log_usage(self.conn, rows)
        else:
            with self.conn() as conn:
                log_usage(conn, rows)

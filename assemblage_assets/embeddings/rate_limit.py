"""Calls per minute per provider, held across processes and machines through Postgres.

A fixed-window counter in ``embedding_rate_limit`` keyed by (provider, window start). One slot
is one billable HTTP request: an image that costs several requests (OpenAI: a caption, then an
embedding) takes all its slots in one atomic upsert that only increments while the count plus
those slots stays within the limit, so any number of runs, on any number of machines, sharing
the database never exceed it, and an image never gets half its slots. The database clock
decides the window, not the callers'. A 429 with ``Retry-After`` pauses the provider for
everyone (``embedding_provider_pause``).

Over the limit, callers wait for the next window; ``acquire`` gives up after its wait budget
and the stage then reschedules the image about 30 s later. Work is never dropped or failed
for being over the limit. One-off calls (searches, ``provider-test``, prompt vocabularies:
``text_calls``) take their slots from the same counters with a budget of seconds, then are
refused with nothing sent.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import psycopg

from assemblage_assets.core import db

DEFAULT_PAID_CALLS_PER_MIN = 20


class RateLimiter:
    """Shared limiter for one provider. Thread-safe (one connection, one lock)."""

    def __init__(
        self,
        dsn: str,
        provider: str,
        per_window: int,
        *,
        window_seconds: int = 60,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dsn = dsn
        self.provider = provider
        self.per_window = per_window
        self.window_seconds = window_seconds
        self.sleep = sleep
        self.waited = 0.0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._grants = 0

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = db.open_connection(self.dsn, autocommit=True)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> RateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def try_acquire(self, slots: int = 1) -> float:
        """Take ``slots`` call slots at once (all or none): 0.0 when granted, else the seconds
        until they may be free. More slots than the limit can never be granted: ``ValueError``."""
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        if 0 < self.per_window < slots:
            raise ValueError(f"{slots} slots can never fit a limit of {self.per_window} per window")
        with self._lock:
            conn = self._connection()
            paused = conn.execute(
                """SELECT extract(epoch FROM paused_until - clock_timestamp())::float
                   FROM embedding_provider_pause WHERE provider = %s AND paused_until > clock_timestamp()""",
                (self.provider,),
            ).fetchone()
            if paused:
                return max(0.05, paused[0])
            if self.per_window <= 0:
                return 0.0
            row = conn.execute(
                """WITH w AS (
                       SELECT to_timestamp(floor(extract(epoch FROM clock_timestamp()) / %(w)s) * %(w)s) AS start)
                   INSERT INTO embedding_rate_limit AS r (provider, window_start, calls)
                   SELECT %(p)s, w.start, %(n)s FROM w
                   ON CONFLICT (provider, window_start) DO UPDATE SET calls = r.calls + %(n)s
                   WHERE r.calls + %(n)s <= %(limit)s
                   RETURNING calls""",
                {"w": self.window_seconds, "p": self.provider, "limit": self.per_window, "n": slots},
            ).fetchone()
            if row is not None:
                self._grants += 1
                if self._grants % 500 == 0:
                    self._cleanup(conn)
                return 0.0
            wait = conn.execute(
                """SELECT %(w)s - mod(extract(epoch FROM clock_timestamp())::numeric, %(w)s)::float""",
                {"w": self.window_seconds},
            ).fetchone()[0]
            return max(0.05, float(wait))

    def acquire(self, max_wait: float, slots: int = 1) -> bool:
        """Take ``slots`` slots at once, waiting up to ``max_wait`` seconds in total; False if the
        budget ran out."""
        deadline = time.monotonic() + max_wait
        while True:
            wait = self.try_acquire(slots)
            if wait == 0.0:
                return True
            wait += random.uniform(0, 0.25)  # spread the herd at the window edge
            if time.monotonic() + wait > deadline:
                return False
            self.waited += wait
            self.sleep(wait)

    def pause(self, seconds: float, reason: str = "") -> None:
        """Nobody calls this provider for ``seconds`` (a 429's Retry-After)."""
        with self._lock:
            self._connection().execute(
                """INSERT INTO embedding_provider_pause (provider, paused_until, reason)
                   VALUES (%s, clock_timestamp() + make_interval(secs => %s), %s)
                   ON CONFLICT (provider) DO UPDATE SET
                       paused_until = GREATEST(embedding_provider_pause.paused_until, EXCLUDED.paused_until),
                       reason = EXCLUDED.reason""",
                (self.provider, max(0.0, seconds), reason[:500]),
            )

    def _cleanup(self, conn: psycopg.Connection) -> None:
        conn.execute(
            "DELETE FROM embedding_rate_limit WHERE provider = %s AND window_start < clock_timestamp() - interval '1 day'",
            (self.provider,),
        )

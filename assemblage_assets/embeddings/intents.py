"""The journal of paid calls (``paid_call_intents``): every billable request of an image is
written down before it is sent, so a crash never buys an image again unknowingly and never
loses a cost row.

- ``intend`` commits the intent before the request goes out; ``created`` stores the provider's
  id (a Replicate prediction) the moment it is known.
- The stage settles an image's open intents in the transaction that writes its cost row and
  vector (``settle``): settled intents and cost rows match one to one.
- A restarted run (holding the image's claim, so the intent's run is gone) resumes what it
  finds open: Replicate fetches the prediction by its id; a request with no id to fetch (OpenAI)
  is counted as billed and lost (``sweep``: a cost row with ``ok = false`` at the estimated
  price) and the image is bought again. That is the bounded in-flight loss of a kill: at most
  the images the stage had submitted (``CONCURRENCY`` running, up to ``CONCURRENCY - 1``
  answered but not yet committed), each request logged.

The embeddings stage journals under the embedding model, the captions stage (``captions.py``)
under the caption model with request ``caption`` and cost rows of purpose ``caption``: the two
never share an open request of one image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from assemblage_assets.core import db
from assemblage_assets.embeddings.usage_log import UsageRow, log_usage
from resources.embedding.types import PendingCall, Usage

OPEN_STATES = ("intent", "created")


class PaidCallJournal:
    """``CallJournal`` of one run for one (provider, model), on its own autocommit connection
    shared by the worker threads (one lock): each write commits at once."""

    def __init__(self, dsn: str, provider: str, model: str, run_id: str | None, lost_usage: Usage,
                 *, purpose: str = "image") -> None:
        self.dsn, self.provider, self.model, self.run_id = dsn, provider, model, run_id
        self.lost_usage = lost_usage  # what a call whose answer was never seen is assumed to cost
        self.purpose = purpose  # of the cost rows of lost calls: image (vectors) or caption
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self.counts = {"intents": 0, "resumed": 0, "lost": 0, "unbilled": 0}

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = db.open_connection(self.dsn, autocommit=True)
        return self._conn

    def _execute(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self._connection().execute(sql, params)
            except psycopg.OperationalError:  # a database restart: one fresh connection, once
                self._conn = None
                cur = self._connection().execute(sql, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def pending(self, image_id: str, request: str) -> PendingCall | None:
        rows = self._execute(
            """SELECT id, call_id, request_input, extract(epoch FROM now() - created_at)::float
               FROM paid_call_intents
               WHERE provider = %s AND model = %s AND image_id = %s AND request = %s AND state = ANY(%s)
               ORDER BY id DESC LIMIT 1""",
            (self.provider, self.model, image_id, request, list(OPEN_STATES)),
        )
        if not rows:
            return None
        self.counts["resumed"] += 1
        intent_id, call_id, request_input, age = rows[0]
        return PendingCall(int(intent_id), call_id, request_input, float(age))

    def intend(self, image_id: str, request: str, request_input: dict[str, Any] | None = None) -> int:
        params = (self.provider, self.model, image_id, request, Jsonb(request_input) if request_input else None,
                  self.run_id)
        sql = """INSERT INTO paid_call_intents (provider, model, image_id, request, request_input, run_id)
                 VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"""
        try:
            rows = self._execute(sql, params)
        except psycopg.errors.UniqueViolation:
            # An open request nobody resumed (a provider that cannot fetch by id): billed, lost.
            self.sweep(image_id, request)
            rows = self._execute(sql, params)
        self.counts["intents"] += 1
        return int(rows[0][0])

    def created(self, intent_id: int, call_id: str) -> None:
        self._execute(
            "UPDATE paid_call_intents SET state = 'created', call_id = %s, updated_at = now() WHERE id = %s",
            (call_id, intent_id),
        )

    def unbilled(self, intent_id: int) -> None:
        self.counts["unbilled"] += 1
        self._execute(
            "UPDATE paid_call_intents SET state = 'unbilled', updated_at = now() WHERE id = %s AND state = ANY(%s)",
            (intent_id, list(OPEN_STATES)),
        )

    def lost(self, intent_id: int, usage: Usage, image_id: str) -> None:
        """A billed request whose result is gone: its cost row (``ok = false``) and the intent's
        state commit together."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    with conn.transaction():
                        closed = conn.execute(
                            """UPDATE paid_call_intents SET state = 'lost', updated_at = now()
                               WHERE id = %s AND state = ANY(%s) RETURNING id""",
                            (intent_id, list(OPEN_STATES)),
                        ).fetchall()
                        if closed:
                            log_usage(conn, [UsageRow(self.provider, self.model, image_id, usage,
                                                      purpose=self.purpose, ok=False, run_id=self.run_id)])
                    break
                except psycopg.OperationalError:
                    self._conn = None
                    if attempt == 2:
                        raise
        if closed:
            self.counts["lost"] += 1

    def sweep(self, image_id: str, request: str | None = None) -> int:
        """Count every open request of the image (of one kind, or all) as billed and lost; for
        providers that cannot fetch an earlier call's result. Returns how many."""
        rows = self._execute(
            """SELECT id FROM paid_call_intents
               WHERE provider = %s AND model = %s AND image_id = %s AND state = ANY(%s)
                 AND (%s::text IS NULL OR request = %s)""",
            (self.provider, self.model, image_id, list(OPEN_STATES), request, request),
        )
        for (intent_id,) in rows:
            self.lost(int(intent_id), self.lost_usage, image_id)
        return len(rows)


def settle(conn: psycopg.Connection, provider: str, model: str, image_ids: Sequence[str]) -> int:
    """Close the open requests of images whose outcome (with its cost row) is being written; in
    the caller's transaction."""
    if not image_ids:
        return 0
    cur = conn.execute(
        """UPDATE paid_call_intents SET state = 'settled', updated_at = now()
           WHERE provider = %s AND model = %s AND image_id = ANY(%s::uuid[]) AND state = ANY(%s)""",
        (provider, model, list(image_ids), list(OPEN_STATES)),
    )
    return cur.rowcount



def journal_summary(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Open and lost paid requests per (provider, model, request), for ``assemblage status``:
    open ones are resumed (or counted as lost) by the next run of their image's shard; lost ones
    were billed and their result is gone (each has an ``ok = false`` cost row)."""
    return conn.execute(
        """SELECT provider, model, request,
                  count(*) FILTER (WHERE state = 'intent')::int AS intent,
                  count(*) FILTER (WHERE state = 'created')::int AS created,
                  count(*) FILTER (WHERE state = 'lost')::int AS lost,
                  min(created_at) FILTER (WHERE state = ANY(%s)) AS oldest_open
           FROM paid_call_intents WHERE state = ANY(%s)
           GROUP BY provider, model, request ORDER BY provider, model, request""",
        (list(OPEN_STATES), [*OPEN_STATES, "lost"]),
    ).fetchall()

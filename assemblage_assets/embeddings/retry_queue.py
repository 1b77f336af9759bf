"""The embedding retry queue (``embedding_queue``): failed images come back after a backoff,
images over the rate limit come back about 30 s later, and images that keep failing are
parked as ``errored`` with the reason until someone resets them.

An image's first failure and its next two retries wait 1, 2 and 5 minutes; when the third
retry fails too (``MAX_RETRIES``) it becomes ``errored``: left out of runs, the sensor and the
schedule, with the reason in ``last_error`` and in ``processing_log.error_message``
(``error_kind = 'embedding'``, through ``catalog.note_errors``; the path keeps its status). ``assemblage embed --reset-errors``
puts it back. A success removes the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.constants import DERIVED_STATUSES
from assemblage_assets.images import catalog

BACKOFF_MINUTES = (1, 2, 5)
MAX_RETRIES = len(BACKOFF_MINUTES)
RESCHEDULE_SECONDS = 30  # over the rate limit: back in about 30 s, not counted as a failure
ERROR_KIND = "embedding"


def record_failures(
    conn: psycopg.Connection, model: str, shard: str, failures: Sequence[tuple[str, str, str]]
) -> dict[str, int]:
    """Count a failed attempt for each (image_id, kind, message); returns {'retry': n, 'errored': m}."""
    if not failures:
        return {"retry": 0, "errored": 0}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """WITH f (image_id, kind, message) AS (SELECT * FROM unnest(%(ids)s::uuid[], %(kinds)s::text[], %(msgs)s::text[]))
               INSERT INTO embedding_queue AS q (image_id, model, shard, status, retry_count, next_attempt_at,
                                                 error_kind, last_error)
               SELECT image_id, %(model)s, %(shard)s, 'retry', 1, now() + make_interval(mins => %(b1)s), kind, message FROM f
               ON CONFLICT (image_id, model) DO UPDATE SET
                   retry_count = q.retry_count + 1,
                   status = CASE WHEN q.retry_count + 1 > %(max)s THEN 'errored' ELSE 'retry' END,
                   next_attempt_at = now() + make_interval(mins => (%(backoff)s::int[])[LEAST(q.retry_count + 1, %(max)s)]),
                   shard = EXCLUDED.shard, error_kind = EXCLUDED.error_kind, last_error = EXCLUDED.last_error,
                   updated_at = now()
               RETURNING image_id::text AS image_id, status, retry_count, last_error""",
            {
                "ids": [f[0] for f in failures], "kinds": [f[1] for f in failures],
                "msgs": [(f[2] or "")[:2000] for f in failures], "model": model, "shard": shard,
                "b1": BACKOFF_MINUTES[0], "backoff": list(BACKOFF_MINUTES), "max": MAX_RETRIES,
            },
        )
        rows = cur.fetchall()
        errored = [r for r in rows if r["status"] == "errored"]
        catalog.note_errors(conn, ERROR_KIND, [
            (r["image_id"], f"embedding with {model} failed {r['retry_count']} times; last error: {r['last_error']}")
            for r in errored
        ])
    return {"retry": len(rows) - len(errored), "errored": len(errored)}


def record_deferred(
    conn: psycopg.Connection, model: str, shard: str, image_ids: Sequence[str], reason: str,
    seconds: float = RESCHEDULE_SECONDS,
) -> None:
    """Reschedule images (rate limit) without counting a failure."""
    if not image_ids:
        return
    conn.execute(
        """INSERT INTO embedding_queue AS q (image_id, model, shard, status, retry_count, next_attempt_at,
                                             error_kind, last_error)
           SELECT id, %(model)s, %(shard)s, 'retry', 0, now() + make_interval(secs => %(s)s), 'rate-limited', %(reason)s
           FROM unnest(%(ids)s::uuid[]) AS id
           ON CONFLICT (image_id, model) DO UPDATE SET
               next_attempt_at = EXCLUDED.next_attempt_at, shard = EXCLUDED.shard,
               last_error = EXCLUDED.last_error, updated_at = now()
           WHERE q.status = 'retry'""",
        {"ids": list(image_ids), "model": model, "shard": shard, "s": seconds, "reason": reason[:2000]},
    )


def record_success(conn: psycopg.Connection, model: str, image_ids: Sequence[str]) -> None:
    if not image_ids:
        return
    conn.execute(
        "DELETE FROM embedding_queue WHERE model = %s AND image_id = ANY(%s::uuid[])", (model, list(image_ids))
    )
    catalog.clear_errors(conn, ERROR_KIND, image_ids)


def reset_errors(conn: psycopg.Connection, model: str | None = None) -> int:
    """Put errored images back (all models, or one); returns how many."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """DELETE FROM embedding_queue WHERE status = 'errored' AND (%(m)s::text IS NULL OR model = %(m)s)
               RETURNING image_id::text AS image_id""",
            {"m": model},
        ).fetchall()
        ids = [r["image_id"] for r in rows]
        catalog.clear_errors(conn, ERROR_KIND, ids)
    return len(ids)


def due_shards(conn: psycopg.Connection, model: str, limit: int = 100) -> list[str]:
    """Shards holding images whose retry is due (any path of the image counts)."""
    rows = conn.cursor(row_factory=dict_row).execute(
        """SELECT DISTINCT p.shard FROM embedding_queue q
           JOIN processing_log p ON p.image_id = q.image_id
           WHERE q.model = %s AND q.status = 'retry' AND q.next_attempt_at <= now()
             AND p.status = ANY(%s)
           ORDER BY p.shard LIMIT %s""",
        (model, list(DERIVED_STATUSES), limit),
    ).fetchall()
    return [r["shard"] for r in rows]


def queue_counts(conn: psycopg.Connection, model: str | None = None) -> dict[str, int]:
    rows = conn.cursor(row_factory=dict_row).execute(
        """SELECT status, count(*) AS n, count(*) FILTER (WHERE next_attempt_at <= now()) AS due
           FROM embedding_queue WHERE %(m)s::text IS NULL OR model = %(m)s GROUP BY status""",
        {"m": model},
    ).fetchall()
    counts = {"retry": 0, "retry_due": 0, "errored": 0}
    for r in rows:
        counts[r["status"]] = r["n"]
        if r["status"] == "retry":
            counts["retry_due"] = r["due"]
    return counts


def errored(conn: psycopg.Connection, model: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT q.image_id::text AS image_id, q.model, q.shard, q.retry_count, q.error_kind, q.last_error,
                  (SELECT min(local_path) FROM processing_log p WHERE p.image_id = q.image_id) AS local_path
           FROM embedding_queue q WHERE q.status = 'errored' AND (%(m)s::text IS NULL OR q.model = %(m)s)
           ORDER BY q.updated_at DESC LIMIT %(limit)s""",
        {"m": model, "limit": limit},
    ).fetchall()


def shard_queue_counts(conn: psycopg.Connection, shard: str, model: str) -> tuple[int, int]:
    """(waiting for a retry, errored) images of the shard for ``model``."""
    row = conn.cursor(row_factory=tuple_row).execute(
        """SELECT count(*) FILTER (WHERE q.status = 'retry'), count(*) FILTER (WHERE q.status = 'errored')
           FROM embedding_queue q WHERE q.model = %s
             AND EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = q.image_id AND p.shard = %s)""",
        (model, shard),
    ).fetchone()
    return int(row[0]), int(row[1])

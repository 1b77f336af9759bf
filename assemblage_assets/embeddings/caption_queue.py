"""Which images still need a caption of the active caption model, and the record of failed
caption attempts (``caption_failures``, sql/0009): the one definition of "missing a caption"
shared by the ``captions`` stage, its asset check, ``assemblage caption`` and
``missing_captions_sensor``.

An image is missing a caption for a model when one of its paths is derived at least
(``processed``, ``uploaded`` or ``indexed``), ``images.caption`` is empty or from another model,
and no failure of that model holds it (``errored``, or waiting for its retry). A failed attempt
(broken reply, 4xx/5xx, timeout, undecodable image) waits 1, 2 and 5 minutes; after the third
retry fails it is ``errored`` until ``assemblage caption --reset-errors``. A caption clears the row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.constants import DERIVED_STATUSES, PUBLISHED_STATUSES, preview_key
from resources.embedding.types import EmbedItem

BACKOFF_MINUTES = (1, 2, 5)
MAX_RETRIES = len(BACKOFF_MINUTES)
RESCHEDULE_SECONDS = 30  # over the rate limit: back in about 30 s, not counted as a failure

# Over processing_log p joined to images i; parameters %(statuses)s and %(model)s.
MISSING_CAPTION = """p.status = ANY(%(statuses)s)
      AND (i.caption IS NULL OR i.caption_model IS DISTINCT FROM %(model)s)
      AND NOT EXISTS (SELECT 1 FROM caption_failures f WHERE f.image_id = p.image_id AND f.caption_model = %(model)s
                      AND (f.status = 'errored' OR f.next_attempt_at > now()))"""


def _params(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "statuses": list(DERIVED_STATUSES), **extra}


def count_missing(conn: psycopg.Connection, shard: str | None, model: str) -> int:
    """Images (of one shard, or all) a ``captions`` run with ``model`` would caption now."""
    row = conn.cursor(row_factory=tuple_row).execute(
        f"""SELECT count(DISTINCT p.image_id) FROM processing_log p JOIN images i ON i.id = p.image_id
            WHERE (%(shard)s::text IS NULL OR p.shard = %(shard)s) AND {MISSING_CAPTION}""",
        _params(model, shard=shard),
    ).fetchone()
    return int(row[0])


def shards_missing_captions(conn: psycopg.Connection, model: str) -> list[str]:
    rows = conn.cursor(row_factory=tuple_row).execute(
        f"""SELECT DISTINCT p.shard FROM processing_log p JOIN images i ON i.id = p.image_id
            WHERE {MISSING_CAPTION} ORDER BY p.shard""",
        _params(model),
    ).fetchall()
    return [r[0] for r in rows]


def shards_missing_published_captions(
    conn: psycopg.Connection, model: str, *, changed_since: datetime | None = None, among: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Shards with a published image (``uploaded``/``indexed``) missing a caption of ``model``, for
    ``missing_captions_sensor``: ``shard``, ``missing`` (images) and ``changed`` (their paths' latest
    update), which together say whether a run already saw this state. ``changed_since`` limits the
    look to shards with paths updated after it or a failed caption whose retry fell due since;
    ``among`` adds shards to look at (a backlog)."""
    return conn.cursor(row_factory=dict_row).execute(
        f"""WITH looked AS (
                SELECT DISTINCT shard FROM processing_log
                WHERE %(since)s::timestamptz IS NULL OR updated_at > %(since)s
                UNION SELECT shard FROM caption_failures
                WHERE %(since)s::timestamptz IS NOT NULL AND caption_model = %(model)s AND status = 'retry'
                  AND next_attempt_at > %(since)s AND next_attempt_at <= now()
                UNION SELECT unnest(%(among)s::text[]))
            SELECT p.shard, count(DISTINCT p.image_id) AS missing, max(p.updated_at) AS changed
            FROM processing_log p JOIN looked USING (shard) JOIN images i ON i.id = p.image_id
            WHERE {MISSING_CAPTION}
            GROUP BY p.shard ORDER BY p.shard""",
        {**_params(model, since=changed_since, among=list(among)), "statuses": list(PUBLISHED_STATUSES)},
    ).fetchall()


def candidates(
    conn: psycopg.Connection, shard: str, model: str, cache_dir: Path, *, limit: int = 0, page_size: int = 500
) -> Iterator[EmbedItem]:
    """The shard's images to caption, paged by image id (no list of the shard in memory)."""
    after, seen = "00000000-0000-0000-0000-000000000000", 0
    while True:
        rows = conn.cursor(row_factory=dict_row).execute(
            f"""SELECT DISTINCT ON (p.image_id) p.image_id::text AS image_id, p.local_path, i.preview_key,
                       i.thumbnail_key, i.preview_url, i.thumbnail_url
                FROM processing_log p JOIN images i ON i.id = p.image_id
                WHERE p.shard = %(shard)s AND p.image_id > %(after)s::uuid AND {MISSING_CAPTION}
                ORDER BY p.image_id, p.local_path LIMIT %(page)s""",
            _params(model, shard=shard, after=after, page=page_size),
        ).fetchall()
        for row in rows:
            if limit and seen >= limit:
                return
            seen += 1
            preview = cache_dir / (row["preview_key"] or preview_key(row["image_id"]))
            thumbnail = cache_dir / row["thumbnail_key"] if row["thumbnail_key"] else None
            yield EmbedItem(
                image_id=row["image_id"], path=row["local_path"],
                preview_path=str(preview) if preview.is_file() else None,
                thumbnail_path=str(thumbnail) if thumbnail is not None and thumbnail.is_file() else None,
                preview_url=row["preview_url"], thumbnail_url=row["thumbnail_url"],
            )
        if len(rows) < page_size:
            return
        after = rows[-1]["image_id"]


def has_caption(conn: psycopg.Connection, image_id: str, model: str) -> bool:
    """Whether the image already holds a caption of ``model`` (another run bought it meanwhile)."""
    row = conn.execute(
        "SELECT 1 FROM images WHERE id = %s AND caption IS NOT NULL AND caption_model = %s", (image_id, model)
    ).fetchone()
    return row is not None


def record_failures(
    conn: psycopg.Connection, model: str, shard: str, failures: Sequence[tuple[str, str, str, bool]]
) -> dict[str, int]:
    """Count a failed attempt for each (image_id, kind, message, paid); returns {'retry': n, 'errored': m}."""
    if not failures:
        return {"retry": 0, "errored": 0}
    rows = conn.cursor(row_factory=tuple_row).execute(
        """WITH f (image_id, kind, message, paid) AS (
               SELECT * FROM unnest(%(ids)s::uuid[], %(kinds)s::text[], %(msgs)s::text[], %(paid)s::boolean[]))
           INSERT INTO caption_failures AS c (image_id, caption_model, shard, status, attempts, next_attempt_at,
                                              error_kind, last_error, paid)
           SELECT image_id, %(model)s, %(shard)s, 'retry', 1, now() + make_interval(mins => %(b1)s), kind, message, paid
           FROM f ORDER BY image_id
           ON CONFLICT (image_id, caption_model) DO UPDATE SET
               attempts = c.attempts + 1,
               status = CASE WHEN c.attempts + 1 > %(max)s THEN 'errored' ELSE 'retry' END,
               next_attempt_at = now() + make_interval(mins => (%(backoff)s::int[])[LEAST(c.attempts + 1, %(max)s)]),
               shard = EXCLUDED.shard, error_kind = EXCLUDED.error_kind, last_error = EXCLUDED.last_error,
               paid = EXCLUDED.paid, updated_at = now()
           RETURNING status""",
        {
            "ids": [f[0] for f in failures], "kinds": [f[1] for f in failures],
            "msgs": [(f[2] or "")[:2000] for f in failures], "paid": [bool(f[3]) for f in failures],
            "model": model, "shard": shard, "b1": BACKOFF_MINUTES[0], "backoff": list(BACKOFF_MINUTES),
            "max": MAX_RETRIES,
        },
    ).fetchall()
    errored = sum(1 for (status,) in rows if status == "errored")
    return {"retry": len(rows) - errored, "errored": errored}


def record_deferred(conn: psycopg.Connection, model: str, shard: str, image_ids: Sequence[str], reason: str,
                    seconds: float = RESCHEDULE_SECONDS) -> None:
    """Reschedule images (rate limit) without counting a failure."""
    if image_ids:
        conn.execute(
            """INSERT INTO caption_failures AS c (image_id, caption_model, shard, status, attempts, next_attempt_at,
                                                  error_kind, last_error)
               SELECT id, %(model)s, %(shard)s, 'retry', 0, now() + make_interval(secs => %(s)s), 'rate-limited', %(r)s
               FROM unnest(%(ids)s::uuid[]) AS id
               ON CONFLICT (image_id, caption_model) DO UPDATE SET
                   next_attempt_at = EXCLUDED.next_attempt_at, last_error = EXCLUDED.last_error, updated_at = now()
               WHERE c.status = 'retry'""",
            {"ids": sorted(image_ids), "model": model, "shard": shard, "s": seconds, "r": reason[:2000]},
        )


def record_success(conn: psycopg.Connection, model: str, image_ids: Sequence[str]) -> None:
    if image_ids:
        conn.execute(
            "DELETE FROM caption_failures WHERE caption_model = %s AND image_id = ANY(%s::uuid[])",
            (model, sorted(image_ids)),
        )


def reset_errors(conn: psycopg.Connection, model: str | None = None) -> int:
    """Put errored images back (every caption model, or one); returns how many."""
    cur = conn.execute(
        "DELETE FROM caption_failures WHERE status = 'errored' AND (%(m)s::text IS NULL OR caption_model = %(m)s)",
        {"m": model},
    )
    return cur.rowcount


def shard_counts(conn: psycopg.Connection, shard: str, model: str) -> dict[str, int]:
    """Captioned, missing, waiting for a retry and errored images of the shard for ``model``."""
    row = conn.cursor(row_factory=dict_row).execute(
        """SELECT count(DISTINCT i.id) FILTER (WHERE i.caption IS NOT NULL AND i.caption_model = %(model)s) AS captioned,
                  count(DISTINCT f.image_id) FILTER (WHERE f.status = 'retry') AS retry_pending,
                  count(DISTINCT f.image_id) FILTER (WHERE f.status = 'errored') AS errored
           FROM processing_log p JOIN images i ON i.id = p.image_id
           LEFT JOIN caption_failures f ON f.image_id = p.image_id AND f.caption_model = %(model)s
           WHERE p.shard = %(shard)s AND p.status = ANY(%(statuses)s)""",
        _params(model, shard=shard),
    ).fetchone()
    return {**{k: int(v) for k, v in row.items()}, "missing": count_missing(conn, shard, model)}


def errored(conn: psycopg.Connection, model: str | None = None, limit: int = 20) -> list[dict[str, object]]:
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT f.image_id::text AS image_id, f.caption_model, f.shard, f.attempts, f.error_kind, f.last_error,
                  (SELECT min(local_path) FROM processing_log p WHERE p.image_id = f.image_id) AS local_path
           FROM caption_failures f WHERE f.status = 'errored' AND (%(m)s::text IS NULL OR f.caption_model = %(m)s)
           ORDER BY f.updated_at DESC LIMIT %(limit)s""",
        {"m": model, "limit": limit},
    ).fetchall()

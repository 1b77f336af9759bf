"""What the catalogue says, for ``assemblage status``, asset metadata and sensors: paths per
status, failures with their reasons, samples, the database clock, and rows whose status the
catalogue contradicts. Reads only; the writes of ``images`` and ``processing_log`` are in
``catalog.py``."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row

from assemblage_assets.constants import DERIVED_STATUSES, NOT_INGESTED_STATUSES, ImageStatus


def status_counts(conn: psycopg.Connection, shard: str | None = None) -> dict[str, int]:
    rows = conn.execute(
        """SELECT status, count(*) AS n FROM processing_log
           WHERE %(shard)s::text IS NULL OR shard = %(shard)s GROUP BY status""",
        {"shard": shard},
    ).fetchall()
    counts = dict.fromkeys((s.value for s in ImageStatus), 0)
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def failures(conn: psycopg.Connection, shard: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT local_path, shard, status, error_kind, error_message, attempts FROM processing_log
           WHERE status = ANY(%(statuses)s) AND (%(shard)s::text IS NULL OR shard = %(shard)s)
           ORDER BY status, shard, local_path LIMIT %(limit)s""",
        {"shard": shard, "limit": limit, "statuses": list(NOT_INGESTED_STATUSES)},
    ).fetchall()


def derived_samples(conn: psycopg.Connection, shard: str, limit: int = 5) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT DISTINCT ON (i.id) i.id::text AS id, p.local_path, i.width, i.height, i.format,
                  i.thumbnail_key, i.preview_key, i.palette
           FROM processing_log p JOIN images i ON i.id = p.image_id
           WHERE p.shard = %s AND i.derived_at IS NOT NULL
           ORDER BY i.id LIMIT %s""",
        (shard, limit),
    ).fetchall()


def count_images(conn: psycopg.Connection) -> int:
    """Distinct images (contents) in the catalogue."""
    return int(conn.cursor(row_factory=tuple_row).execute("SELECT count(*) FROM images").fetchone()[0])


def database_now(conn: psycopg.Connection) -> Any:
    """The database clock: sensors compare ``processing_log.updated_at`` against it."""
    return conn.cursor(row_factory=tuple_row).execute("SELECT now()").fetchone()[0]


# Each: (issue, the path's status, what the catalogue says instead). Over processing_log p JOIN images i.
_DISAGREEMENTS = (
    ("uploaded-with-vector", "p.status = %(uploaded)s AND i.uploaded_at IS NOT NULL AND %(model)s::text IS NOT NULL "
     "AND EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %(model)s)"),
    ("uploaded-not-published", "p.status = %(uploaded)s AND i.uploaded_at IS NULL"),
    ("indexed-not-published", "p.status = %(indexed)s AND i.uploaded_at IS NULL"),
    ("indexed-without-vector", "p.status = %(indexed)s AND i.uploaded_at IS NOT NULL AND %(model)s::text IS NOT NULL "
     "AND NOT EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %(model)s)"),
    ("derived-status-without-derivatives", "p.status = ANY(%(derived)s) AND i.derived_at IS NULL"),
)


def status_disagreements(conn: psycopg.Connection, model: str | None, limit: int = 20) -> dict[str, Any]:
    """Paths whose status says something the catalogue does not (``model``: the active one, or
    None to skip the vector checks): counts per issue and the first ``limit`` rows."""
    params = {"model": model, "derived": list(DERIVED_STATUSES), "limit": limit,
              "uploaded": ImageStatus.UPLOADED.value, "indexed": ImageStatus.INDEXED.value}
    union = " UNION ALL ".join(
        f"SELECT '{issue}' AS issue, p.local_path, p.shard, p.status FROM processing_log p "
        f"JOIN images i ON i.id = p.image_id WHERE {predicate}"
        for issue, predicate in _DISAGREEMENTS
    )
    counts = {r["issue"]: r["n"] for r in conn.execute(
        f"SELECT issue, count(*) AS n FROM ({union}) d GROUP BY issue", params
    )}
    rows = conn.execute(f"SELECT * FROM ({union}) d ORDER BY issue, shard, local_path LIMIT %(limit)s", params).fetchall()
    return {"total": sum(counts.values()), "by_issue": counts, "rows": [dict(r) for r in rows]}

"""Reads of the near-duplicate groups: the CLI's listing and the per-shard counts of the asset check."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from assemblage_assets.constants import DERIVED_STATUSES, ImageStatus


def list_groups(conn: psycopg.Connection, shard: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
    """``[{"group": id, "images": [{"image_id", "path", "distance", "clip_distance", "status"}, ...]}]``,
    representative first, then by distance; only groups with a member in ``shard`` when given."""
    rows = conn.cursor(row_factory=dict_row).execute(
        """WITH picked AS (
               SELECT g.id, g.representative_id FROM duplicate_groups g
               WHERE %(shard)s::text IS NULL OR EXISTS (
                   SELECT 1 FROM duplicate_members m JOIN processing_log p ON p.image_id = m.image_id
                   WHERE m.group_id = g.id AND p.shard = %(shard)s)
               ORDER BY g.id LIMIT CASE WHEN %(limit)s > 0 THEN %(limit)s END)
           SELECT g.id AS group_id, m.image_id::text AS image_id, m.hash_distance, m.clip_distance,
                  m.image_id = g.representative_id AS representative, path.local_path, path.status
           FROM picked g JOIN duplicate_members m ON m.group_id = g.id
           LEFT JOIN LATERAL (SELECT p.local_path, p.status FROM processing_log p WHERE p.image_id = m.image_id
                              ORDER BY (p.shard = %(shard)s) DESC NULLS LAST, p.local_path LIMIT 1) path ON true
           ORDER BY g.id, representative DESC, m.hash_distance, m.image_id""",
        {"shard": shard, "limit": limit},
    ).fetchall()
    result: list[dict[str, Any]] = []
    for row in rows:
        if not result or result[-1]["group"] != row["group_id"]:
            result.append({"group": row["group_id"], "images": []})
        result[-1]["images"].append({
            "image_id": row["image_id"], "path": row["local_path"], "distance": row["hash_distance"],
            "clip_distance": None if row["clip_distance"] is None else round(float(row["clip_distance"]), 4),
            "status": row["status"],
        })
    return result


def shard_counts(conn: psycopg.Connection, shard: str) -> dict[str, int]:
    """The shard's images: ``checked``, in a group (``grouped``), ``duplicates`` (grouped and not
    their group's representative), ``skipped`` (paths held back as ``duplicate``), ``groups`` touched."""
    row = conn.cursor(row_factory=dict_row).execute(
        """WITH imgs AS (SELECT DISTINCT image_id FROM processing_log WHERE shard = %(shard)s AND image_id IS NOT NULL)
           SELECT (SELECT count(*) FROM imgs JOIN duplicate_index x USING (image_id)) AS checked,
                  count(m.image_id) AS grouped,
                  count(m.image_id) FILTER (WHERE m.image_id <> g.representative_id) AS duplicates,
                  count(DISTINCT m.group_id) AS groups,
                  (SELECT count(*) FROM processing_log WHERE shard = %(shard)s AND status = %(dup)s) AS skipped
           FROM imgs JOIN duplicate_members m USING (image_id) JOIN duplicate_groups g ON g.id = m.group_id""",
        {"shard": shard, "dup": ImageStatus.DUPLICATE.value},
    ).fetchone()
    return {k: int(v) for k, v in row.items()}


def orphan_skips(conn: psycopg.Connection, shard: str) -> int:
    """The shard's ``duplicate`` paths whose group has no kept (published or publishable) other
    member: held back with nothing published in their place. Should be 0."""
    row = conn.execute(
        """SELECT count(*) AS n FROM processing_log p
           LEFT JOIN duplicate_members m ON m.image_id = p.image_id
           WHERE p.shard = %(shard)s AND p.status = %(dup)s AND NOT EXISTS (
               SELECT 1 FROM duplicate_members o JOIN processing_log q ON q.image_id = o.image_id
               WHERE o.group_id = m.group_id AND o.image_id <> p.image_id AND q.status = ANY(%(kept)s))""",
        {"shard": shard, "dup": ImageStatus.DUPLICATE.value, "kept": list(DERIVED_STATUSES)},
    ).fetchone()
    return int(row["n"])

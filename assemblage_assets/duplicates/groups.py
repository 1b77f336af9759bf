"""The only module that writes ``duplicate_index``, ``duplicate_groups`` and ``duplicate_members``.

An image is indexed once, when the ``duplicates`` stage first checks it; its candidates are the
indexed images within the hash thresholds (found through the band indexes, ``bands.py``). Groups
are single-linkage: an image joining images of two groups merges them (into the older group).
After every change the group's representative (most pixels, then earliest seen, then id) and
each member's distances to it are recomputed, which costs the group's size, not the catalogue's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.constants import DERIVED_STATUSES, ImageStatus
from assemblage_assets.duplicates.bands import neighbourhoods

# Serialises the grouping of concurrent shard runs: a merge reads and rewrites two groups.
LOCK_KEY = 0x6475_706C  # "dupl"

_BAND_EXPRESSIONS = ("(phash >> 48) & 65535", "(phash >> 32) & 65535", "(phash >> 16) & 65535", "phash & 65535")

_SHARD_UNCHECKED = """
    SELECT i.id::text AS image_id, i.phash, i.dhash, (i.width::bigint * i.height) AS pixels, i.created_at AS seen_at
    FROM images i
    WHERE i.phash IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM duplicate_index x WHERE x.image_id = i.id)
      AND EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = i.id AND p.shard = %(shard)s
                  AND p.status = ANY(%(statuses)s))
    ORDER BY i.created_at, i.id
    LIMIT %(limit)s"""


@dataclass(frozen=True)
class Candidate:
    image_id: str
    group_id: int | None
    hash_distance: int
    dhash_distance: int | None


def unchecked_images(conn: psycopg.Connection, shard: str, limit: int = 500) -> list[dict[str, Any]]:
    """The shard's derived images the stage has not compared yet, in first-seen order."""
    statuses = [*DERIVED_STATUSES, ImageStatus.DUPLICATE.value]
    return conn.cursor(row_factory=dict_row).execute(
        _SHARD_UNCHECKED, {"shard": shard, "statuses": statuses, "limit": limit}
    ).fetchall()


def held_back_elsewhere(conn: psycopg.Connection, shard: str) -> list[tuple[str, str]]:
    """(image id, message) of the shard's ``processed`` paths whose image another path already
    holds back as ``duplicate`` (the same content, derived once, reached here later)."""
    rows = conn.cursor(row_factory=tuple_row).execute(
        """SELECT DISTINCT ON (p.image_id) p.image_id::text, d.error_message
           FROM processing_log p JOIN processing_log d ON d.image_id = p.image_id AND d.status = %s
           WHERE p.shard = %s AND p.status = %s ORDER BY p.image_id, d.local_path""",
        (ImageStatus.DUPLICATE.value, shard, ImageStatus.PROCESSED.value),
    ).fetchall()
    return [(r[0], r[1] or "near-duplicate held back under another path") for r in rows]


def lock(conn: psycopg.Connection) -> None:
    """Transaction-scoped: held until the caller's transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))


def candidates(
    conn: psycopg.Connection, phash: int, dhash: int | None, phash_distance: int, dhash_distance: int
) -> list[Candidate]:
    """Indexed images within ``phash_distance`` (and ``dhash_distance`` when both have a dHash)."""
    probes = neighbourhoods(phash, phash_distance)
    band_match = " OR ".join(f"({expr}) = ANY(%(b{i})s::bigint[])" for i, expr in enumerate(_BAND_EXPRESSIONS))
    rows = conn.cursor(row_factory=tuple_row).execute(
        f"""SELECT x.image_id::text, m.group_id,
                   bit_count((x.phash # %(phash)s::bigint)::bit(64)),
                   bit_count((x.dhash # %(dhash)s::bigint)::bit(64))
            FROM duplicate_index x LEFT JOIN duplicate_members m ON m.image_id = x.image_id
            WHERE ({band_match}) AND bit_count((x.phash # %(phash)s::bigint)::bit(64)) <= %(pd)s""",
        {"phash": phash, "dhash": dhash, "pd": phash_distance, **{f"b{i}": p for i, p in enumerate(probes)}},
    ).fetchall()
    found = [Candidate(r[0], r[1], int(r[2]), None if r[3] is None else int(r[3])) for r in rows]
    return [c for c in found if c.dhash_distance is None or c.dhash_distance <= dhash_distance]


def clip_distances(conn: psycopg.Connection, image_id: str, others: Sequence[str], model: str | None) -> dict[str, float]:
    """Cosine distance from ``image_id`` to each of ``others`` that has a vector of ``model`` (both must)."""
    if not model or not others:
        return {}
    rows = conn.cursor(row_factory=tuple_row).execute(
        """SELECT o.image_id::text, (e.embedding <=> o.embedding)::float8
           FROM image_embeddings e JOIN image_embeddings o ON o.model = e.model AND o.dim = e.dim
           WHERE e.image_id = %s AND e.model = %s AND o.image_id = ANY(%s::uuid[])""",
        (image_id, model, list(others)),
    ).fetchall()
    return {r[0]: float(r[1]) for r in rows}


def index_image(conn: psycopg.Connection, row: dict[str, Any]) -> bool:
    """Record that the image was checked; False when another run already did."""
    cur = conn.execute(
        """INSERT INTO duplicate_index (image_id, phash, dhash, pixels, seen_at)
           VALUES (%(image_id)s, %(phash)s, %(dhash)s, %(pixels)s, %(seen_at)s)
           ON CONFLICT (image_id) DO NOTHING""",
        row,
    )
    return cur.rowcount == 1


def join(conn: psycopg.Connection, image_id: str, partners: Sequence[Candidate], model: str | None) -> tuple[int, int]:
    """Put ``image_id`` in one group with its confirmed ``partners``: a new group, the partners'
    group, or their groups merged into the oldest. Returns (group id, groups merged away)."""
    groups = sorted({p.group_id for p in partners if p.group_id is not None})
    if groups:
        target, merged = groups[0], groups[1:]
        if merged:
            conn.execute("UPDATE duplicate_members SET group_id = %s WHERE group_id = ANY(%s)", (target, merged))
            conn.execute("DELETE FROM duplicate_groups WHERE id = ANY(%s)", (merged,))
    else:
        target = conn.cursor(row_factory=tuple_row).execute(
            "INSERT INTO duplicate_groups (representative_id) VALUES (%s) RETURNING id", (image_id,)
        ).fetchone()[0]
        merged = []
    loose = sorted({image_id, *(p.image_id for p in partners if p.group_id is None)})
    conn.cursor().executemany(
        """INSERT INTO duplicate_members (image_id, group_id, hash_distance) VALUES (%s, %s, 0)
           ON CONFLICT (image_id) DO NOTHING""",
        [(member, target) for member in loose],
    )
    refresh(conn, target, model)
    return target, len(merged)


def refresh(conn: psycopg.Connection, group_id: int, model: str | None) -> None:
    """Representative = most pixels, then earliest seen; distances of every member to it."""
    conn.execute(
        """WITH rep AS (
               SELECT x.image_id, x.phash FROM duplicate_members m JOIN duplicate_index x USING (image_id)
               WHERE m.group_id = %(g)s ORDER BY x.pixels DESC, x.seen_at, x.image_id LIMIT 1),
           upd AS (
               UPDATE duplicate_groups g SET representative_id = rep.image_id, updated_at = now()
               FROM rep WHERE g.id = %(g)s RETURNING g.id)
           UPDATE duplicate_members m
           SET hash_distance = bit_count((x.phash # rep.phash)::bit(64)),
               clip_distance = (SELECT (a.embedding <=> b.embedding)::real
                                FROM image_embeddings a JOIN image_embeddings b ON b.model = a.model AND b.dim = a.dim
                                WHERE a.image_id = m.image_id AND b.image_id = rep.image_id AND a.model = %(model)s)
           FROM duplicate_index x, rep
           WHERE m.group_id = %(g)s AND x.image_id = m.image_id""",
        {"g": group_id, "model": model},
    )


def kept_members(conn: psycopg.Connection, group_id: int, besides: str) -> int:
    """Members other than ``besides`` that are published or on their way (not skipped)."""
    row = conn.cursor(row_factory=tuple_row).execute(
        """SELECT count(DISTINCT m.image_id) FROM duplicate_members m JOIN processing_log p ON p.image_id = m.image_id
           WHERE m.group_id = %s AND m.image_id <> %s AND p.status = ANY(%s)""",
        (group_id, besides, list(DERIVED_STATUSES)),
    ).fetchone()
    return int(row[0])


def reconfirm(conn: psycopg.Connection, shard: str, model: str | None, max_clip: float) -> tuple[int, int]:
    """Members of the shard grouped on their hashes alone whose image and representative now
    both have a vector of ``model``: record the cosine distance, and take out of the group those
    CLIP says are too far (a group left with one member is dropped). Returns (confirmed, detached)."""
    if not model:
        return 0, 0
    rows = conn.cursor(row_factory=tuple_row).execute(
        """UPDATE duplicate_members m SET clip_distance = (a.embedding <=> b.embedding)::real
           FROM duplicate_groups g, image_embeddings a, image_embeddings b
           WHERE m.clip_distance IS NULL AND g.id = m.group_id AND m.image_id <> g.representative_id
             AND a.image_id = m.image_id AND a.model = %(model)s
             AND b.image_id = g.representative_id AND b.model = %(model)s AND b.dim = a.dim
             AND EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = m.image_id AND p.shard = %(shard)s)
           RETURNING m.image_id::text, m.group_id, m.clip_distance""",
        {"model": model, "shard": shard},
    ).fetchall()
    far = sorted((r[0], r[1]) for r in rows if r[2] > max_clip)
    if far:
        conn.execute("DELETE FROM duplicate_members WHERE image_id = ANY(%s::uuid[])", ([f[0] for f in far],))
        for group_id in sorted({f[1] for f in far}):
            left = conn.cursor(row_factory=tuple_row).execute(
                "SELECT count(*) FROM duplicate_members WHERE group_id = %s", (group_id,)).fetchone()[0]
            if left < 2:
                conn.execute("DELETE FROM duplicate_groups WHERE id = %s", (group_id,))  # cascades to the last member
            else:
                refresh(conn, group_id, model)
    return len(rows) - len(far), len(far)

"""Which images still need a vector: the one definition of "missing" the stage, the sensor, the
asset check, ``assemblage embed --estimate`` and ``status`` all share.

An image is missing a vector for a model when one of its paths is derived at least
(``processed``, ``uploaded`` or ``indexed``), it has no row in ``image_embeddings`` for that
model, and the retry queue holds it neither as ``errored`` nor waiting for a retry. A
near-duplicate held back by ``SKIP_NEAR_DUPLICATES`` (a ``duplicate`` path) never is, and in skip
mode a hashed image only once the ``duplicates`` stage has checked it, so no paid call races
that decision.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.constants import DERIVED_STATUSES, preview_key
from assemblage_assets.core import settings
from assemblage_assets.embeddings import tags
from resources.embedding import EmbeddingResource
from resources.embedding.types import EmbedItem

# Over processing_log p; parameters %(statuses)s and %(model)s.
MISSING_VECTOR = """p.status = ANY(%(statuses)s)
      AND NOT EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %(model)s)
      AND NOT EXISTS (SELECT 1 FROM embedding_queue q WHERE q.image_id = p.image_id AND q.model = %(model)s
                      AND (q.status = 'errored' OR q.next_attempt_at > now()))
      AND NOT EXISTS (SELECT 1 FROM processing_log d WHERE d.image_id = p.image_id AND d.status = 'duplicate')
      AND (NOT %(skip_near_duplicates)s OR EXISTS (
          SELECT 1 FROM images h WHERE h.id = p.image_id
          AND (h.phash IS NULL OR EXISTS (SELECT 1 FROM duplicate_index x WHERE x.image_id = h.id))))"""

_PAGE = f"""
    SELECT DISTINCT ON (p.image_id) p.image_id::text AS image_id, p.local_path, i.preview_key,
           i.thumbnail_key, i.preview_url, i.thumbnail_url, i.caption, i.caption_model
    FROM processing_log p JOIN images i ON i.id = p.image_id
    WHERE p.shard = %(shard)s AND p.image_id > %(after)s::uuid AND {MISSING_VECTOR}
    ORDER BY p.image_id, p.local_path
    LIMIT %(page)s"""


def _params(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "statuses": list(DERIVED_STATUSES),
            "skip_near_duplicates": settings.env_bool("SKIP_NEAR_DUPLICATES"), **extra}


def count_candidates(conn: psycopg.Connection, shard: str | None, model: str) -> int:
    """Images (of one shard, or all) that an ``embeddings`` run would embed now."""
    row = conn.cursor(row_factory=tuple_row).execute(
        f"""SELECT count(DISTINCT p.image_id) FROM processing_log p
            WHERE (%(shard)s::text IS NULL OR p.shard = %(shard)s) AND {MISSING_VECTOR}""",
        _params(model, shard=shard),
    ).fetchone()
    return int(row[0])


def candidates(
    conn: psycopg.Connection, shard: str, provider: EmbeddingResource, cache_dir: Path,
    *, limit: int = 0, page_size: int = 500,
) -> Iterator[EmbedItem]:
    """The shard's images to embed, paged by image id (no list of the shard in memory)."""
    model = provider.model_id
    caption_model = getattr(provider, "caption_model", None)
    after, seen = "00000000-0000-0000-0000-000000000000", 0
    while True:
        rows = conn.cursor(row_factory=dict_row).execute(
            _PAGE, _params(model, shard=shard, after=after, page=page_size)
        ).fetchall()
        known = tags.known_tags(conn, [r["image_id"] for r in rows]) if rows and caption_model else {}
        for row in rows:
            if limit and seen >= limit:
                return
            seen += 1
            preview = cache_dir / (row["preview_key"] or preview_key(row["image_id"]))
            thumbnail = cache_dir / row["thumbnail_key"] if row["thumbnail_key"] else None
            yield EmbedItem(
                image_id=row["image_id"],
                path=row["local_path"],
                preview_path=str(preview) if preview.is_file() else None,
                thumbnail_path=str(thumbnail) if thumbnail is not None and thumbnail.is_file() else None,
                preview_url=row["preview_url"],
                thumbnail_url=row["thumbnail_url"],
                tags=known.get(row["image_id"], ()),
                caption=row["caption"] if caption_model and row["caption_model"] == caption_model else None,
            )
        if len(rows) < page_size:
            return
        after = rows[-1]["image_id"]


def shards_missing_embeddings(
    conn: psycopg.Connection, model: str, *, changed_since: datetime | None = None, among: list[str] | None = None
) -> list[str]:
    """Shards with an image missing a vector for ``model``. ``changed_since`` limits the look to
    shards with rows updated after it; ``among`` adds specific shards to look at (a backlog)."""
    rows = conn.cursor(row_factory=tuple_row).execute(
        f"""WITH looked AS (
                SELECT DISTINCT shard FROM processing_log
                WHERE %(since)s::timestamptz IS NULL OR updated_at > %(since)s
                UNION SELECT unnest(%(among)s::text[]))
            SELECT p.shard FROM processing_log p JOIN looked USING (shard)
            WHERE {MISSING_VECTOR}
            GROUP BY p.shard ORDER BY p.shard""",
        _params(model, since=changed_since, among=among or []),
    ).fetchall()
    return [r[0] for r in rows]

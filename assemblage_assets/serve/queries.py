"""Every query of the search service (read-only): filters, the three ranked lists that text
search fuses, image cards and details, shard status and failures, duplicate groups.

All SQL is parameterised; the only composed parts are fixed fragments and the model's literal
and dimension (the partial HNSW index's expression must match them, ``embeddings.vectors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from assemblage_assets.embeddings import search


@dataclass(frozen=True)
class Filters:
    """Restrictions every query accepts (all optional; together they AND)."""

    shards: tuple[str, ...] = ()
    source: str | None = None  # a source URI (folder path, s3://bucket/prefix, dropbox:/Folder): entries under it
    camera_make: str | None = None
    camera_model: str | None = None
    captured_from: date | None = None
    captured_to: date | None = None  # inclusive
    country: str | None = None  # ISO 3166-1 alpha-2
    place: str | None = None  # city or region, case-insensitive substring
    tags: tuple[str, ...] = ()  # every one of them
    orientation: str | None = None  # landscape | portrait | square (upright, from the thumbnail)
    has_duplicates: bool | None = None
    colour: tuple[int, int, int] | None = None
    colour_distance: float = 60.0

    def is_empty(self) -> bool:
        return self == Filters(colour_distance=self.colour_distance)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def where(f: Filters, params: dict[str, Any]) -> sql.Composable:
    """The filters as a predicate on ``images i``; adds their values to ``params``."""
    parts: list[sql.Composable] = [sql.SQL("TRUE")]

    def add(fragment: str, **values: Any) -> None:
        parts.append(sql.SQL(fragment))
        params.update(values)

    if f.shards:
        add("EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = i.id AND p.shard = ANY(%(f_shards)s))",
            f_shards=list(f.shards))
    if f.source:
        # processing_log.local_path holds each entry's source URI (or absolute path): a prefix match
        # ending at a separator, so s3://b/in never matches s3://b/inbox
        prefix = f.source.rstrip("/") + "/"
        add("EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = i.id AND p.local_path LIKE %(f_source)s)",
            f_source=_like(prefix)[1:])
    if f.camera_make:
        add("i.exif_data->>'make' ILIKE %(f_make)s", f_make=_like(f.camera_make))
    if f.camera_model:
        add("i.exif_data->>'model' ILIKE %(f_model)s", f_model=_like(f.camera_model))
    if f.captured_from:
        add("i.captured_at >= %(f_from)s", f_from=datetime.combine(f.captured_from, datetime.min.time()))
    if f.captured_to:
        add("i.captured_at < %(f_to)s", f_to=datetime.combine(f.captured_to + timedelta(days=1), datetime.min.time()))
    if f.country:
        add("i.place_country = %(f_country)s", f_country=f.country.upper())
    if f.place:
        add("(i.place_city ILIKE %(f_place)s OR i.place_region ILIKE %(f_place)s)", f_place=_like(f.place))
    for n, tag in enumerate(f.tags):
        parts.append(sql.SQL("EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = {})").format(
            sql.Placeholder(f"f_tag{n}")))
        params[f"f_tag{n}"] = tag
    if f.orientation:
        w, h = "coalesce(i.thumbnail_width, i.width)", "coalesce(i.thumbnail_height, i.height)"
        op = {"landscape": ">", "portrait": "<", "square": "="}[f.orientation]
        parts.append(sql.SQL(f"{w} {op} {h}"))
    if f.has_duplicates is not None:
        parts.append(sql.SQL("{} EXISTS (SELECT 1 FROM duplicate_members d WHERE d.image_id = i.id)").format(
            sql.SQL("" if f.has_duplicates else "NOT")))
    if f.colour is not None:
        add("palette_distance(i.palette, %(f_r)s, %(f_g)s, %(f_b)s) <= %(f_cd)s",
            f_r=f.colour[0], f_g=f.colour[1], f_b=f.colour[2], f_cd=float(f.colour_distance))
    return sql.SQL(" AND ").join(parts)


# --- the ranked lists of a search ------------------------------------------------------------------


def vector_hits(
    conn: psycopg.Connection, model: dict[str, Any], vector: np.ndarray, n: int, f: Filters,
    *, ef_search: int | None = None, exclude: str | None = None,
) -> list[dict[str, Any]]:
    """Nearest images (``image_id``, ``distance``); without filters exactly ``search.nearest``."""
    if f.is_empty():
        return search.nearest(conn, model, vector, n, exclude, ef_search=ef_search, details=False)
    dim = int(model["dim"])
    params: dict[str, Any] = {"q": search.query_vector(model, vector), "n": n, "exclude": exclude}
    query = sql.SQL(
        """SELECT e.image_id::text AS image_id, (e.embedding::vector({dim}) <=> %(q)b::vector({dim}))::float AS distance
           FROM image_embeddings e JOIN images i ON i.id = e.image_id
           WHERE e.model = {model} AND (%(exclude)s::uuid IS NULL OR e.image_id <> %(exclude)s::uuid) AND {where}
           ORDER BY e.embedding::vector({dim}) <=> %(q)b::vector({dim})
           LIMIT %(n)s"""
    ).format(dim=sql.Literal(dim), model=sql.Literal(model["model"]), where=where(f, params))
    search.set_ef_search(conn, search.ef_search_for(n, ef_search))
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def caption_hits(conn: psycopg.Connection, text: str, n: int, f: Filters) -> list[dict[str, Any]]:
    """Images whose caption matches ``text`` (web-search syntax), best ``ts_rank_cd`` first. The
    expression is the one of the GIN index ``images_caption_fts_idx``."""
    params: dict[str, Any] = {"text": text, "n": n}
    query = sql.SQL(
        """SELECT i.id::text AS image_id,
                  ts_rank_cd(to_tsvector('english', coalesce(i.caption, '')), q)::float AS rank
           FROM images i, websearch_to_tsquery('english', %(text)s) q
           WHERE to_tsvector('english', coalesce(i.caption, '')) @@ q AND {where}
           ORDER BY rank DESC, i.id LIMIT %(n)s"""
    ).format(where=where(f, params))
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def tag_hits(conn: psycopg.Connection, tags: Sequence[str], n: int, f: Filters) -> list[dict[str, Any]]:
    """Images carrying any of ``tags``: most matched tags first, then the summed confidence."""
    if not tags:
        return []
    params: dict[str, Any] = {"tags": list(tags), "n": n}
    # images is joined only to filter: unfiltered, the tag index alone answers
    query = sql.SQL(
        """SELECT t.image_id::text AS image_id, count(DISTINCT t.tag) AS matched, sum(t.confidence)::float AS confidence
           FROM image_tags t {join}
           WHERE t.tag = ANY(%(tags)s) {where}
           GROUP BY t.image_id ORDER BY matched DESC, confidence DESC, t.image_id LIMIT %(n)s"""
    ).format(join=sql.SQL("" if f.is_empty() else "JOIN images i ON i.id = t.image_id"),
             where=sql.SQL("") if f.is_empty() else sql.SQL("AND {}").format(where(f, params)))
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


# --- what the page shows ------------------------------------------------------------------------

_CARD = """i.id::text AS image_id, i.width, i.height, i.thumbnail_width, i.thumbnail_height, i.thumbhash,
           i.thumbnail_url, i.preview_url, i.thumbnail_key IS NOT NULL AS has_thumbnail,
           i.preview_key IS NOT NULL AS has_preview, i.caption, i.captured_at, i.place_city, i.place_country,
           (SELECT min(p.shard) FROM processing_log p WHERE p.image_id = i.id) AS shard"""


def cards(conn: psycopg.Connection, image_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Grid entries of ``image_ids`` (any order), by id."""
    rows = conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_CARD} FROM images i WHERE i.id = ANY(%s::uuid[])", (list(image_ids),)).fetchall()
    return {r["image_id"]: r for r in rows}


def list_images(
    conn: psycopg.Connection, f: Filters, limit: int, after: tuple[datetime, str] | None
) -> list[dict[str, Any]]:
    """Browse without a query: newest first, keyset-paginated on (created_at, id)."""
    params: dict[str, Any] = {"limit": limit, "t": after[0] if after else None, "i": after[1] if after else None}
    query = sql.SQL(
        f"""SELECT {_CARD}, i.created_at FROM images i
            WHERE {{where}} AND (%(t)s::timestamptz IS NULL OR (i.created_at, i.id) < (%(t)s, %(i)s::uuid))
            ORDER BY i.created_at DESC, i.id DESC LIMIT %(limit)s"""
    ).format(where=where(f, params))
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def image_detail(conn: psycopg.Connection, image_id: str) -> dict[str, Any] | None:
    """Everything the catalogue knows about one image (never the private original's URL)."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        """SELECT i.id::text AS image_id, i.content_hash, i.bytes, i.width, i.height, i.format, i.mode, i.frame_count,
                  i.exif_data, i.captured_at, i.captured_at_source, i.original_key, i.palette, i.thumbnail_key,
                  i.thumbnail_width, i.thumbnail_height, i.preview_key, i.preview_width, i.preview_height,
                  i.thumbnail_url, i.preview_url, i.thumbhash, i.caption, i.caption_model, i.owner, i.latitude,
                  i.longitude, i.place_city, i.place_region, i.place_country, i.derived_at, i.uploaded_at,
                  i.created_at, i.phash::text AS phash
           FROM images i WHERE i.id = %s""", (image_id,)).fetchone()
    if row is None:
        return None
    row["paths"] = cur.execute(
        """SELECT local_path AS path, shard, status, error_kind, error_message, processed_at
           FROM processing_log WHERE image_id = %s ORDER BY local_path""", (image_id,)).fetchall()
    row["tags"] = cur.execute(
        """SELECT tag, max(confidence)::float AS confidence, array_agg(DISTINCT model ORDER BY model) AS models
           FROM image_tags WHERE image_id = %s GROUP BY tag ORDER BY confidence DESC, tag""", (image_id,)).fetchall()
    row["models"] = [r["model"] for r in cur.execute(
        "SELECT model FROM image_embeddings WHERE image_id = %s ORDER BY model", (image_id,)).fetchall()]
    row["duplicates"] = duplicate_group_of(conn, image_id)
    return row


def duplicate_group_of(conn: psycopg.Connection, image_id: str) -> dict[str, Any] | None:
    row = conn.cursor(row_factory=dict_row).execute(
        "SELECT group_id FROM duplicate_members WHERE image_id = %s", (image_id,)).fetchone()
    return None if row is None else duplicate_groups(conn, limit=1, after=row["group_id"] - 1, only=row["group_id"])[0]


def duplicate_groups(
    conn: psycopg.Connection, limit: int, after: int | None = None, only: int | None = None
) -> list[dict[str, Any]]:
    """Duplicate groups by id (keyset after ``after``), each with its members, nearest first."""
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT g.id AS group_id, g.representative_id::text AS representative_id, g.updated_at,
                  (SELECT json_agg(json_build_object(
                       'image_id', m.image_id::text, 'hash_distance', m.hash_distance, 'clip_distance', m.clip_distance,
                       'width', i.width, 'height', i.height, 'bytes', i.bytes, 'thumbhash', i.thumbhash,
                       'thumbnail_url', i.thumbnail_url, 'has_thumbnail', i.thumbnail_key IS NOT NULL)
                       ORDER BY m.image_id = g.representative_id DESC, m.hash_distance, m.image_id)
                   FROM duplicate_members m JOIN images i ON i.id = m.image_id WHERE m.group_id = g.id) AS members
           FROM duplicate_groups g
           WHERE (%(after)s::bigint IS NULL OR g.id > %(after)s) AND (%(only)s::bigint IS NULL OR g.id = %(only)s)
           ORDER BY g.id LIMIT %(limit)s""",
        {"after": after, "only": only, "limit": limit},
    ).fetchall()


# --- shards --------------------------------------------------------------------------------------


def shard_status(conn: psycopg.Connection, limit: int, after: str | None = None,
                 only: str | None = None) -> list[dict[str, Any]]:
    """Per shard: paths by status and the number of failures, by key (keyset after ``after``)."""
    rows = conn.cursor(row_factory=dict_row).execute(
        """SELECT shard, json_object_agg(status, n) AS counts, sum(n)::bigint AS paths
           FROM (SELECT shard, status, count(*) AS n FROM processing_log
                 WHERE (%(after)s::text IS NULL OR shard > %(after)s) AND (%(only)s::text IS NULL OR shard = %(only)s)
                 GROUP BY shard, status) s
           GROUP BY shard ORDER BY shard LIMIT %(limit)s""",
        {"after": after, "only": only, "limit": limit},
    ).fetchall()
    for row in rows:
        row["failed"] = int(row["counts"].get("failed", 0))
    return rows


def shard_failures(conn: psycopg.Connection, shard: str, limit: int, after: str | None = None) -> list[dict[str, Any]]:
    """Failed paths of a shard with why, by path (keyset after ``after``)."""
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT local_path AS path, error_kind, error_message, attempts, updated_at, image_id::text AS image_id
           FROM processing_log WHERE shard = %(shard)s AND status = 'failed'
             AND (%(after)s::text IS NULL OR local_path > %(after)s)
           ORDER BY local_path LIMIT %(limit)s""",
        {"shard": shard, "after": after, "limit": limit},
    ).fetchall()


def media(conn: psycopg.Connection, image_id: str) -> dict[str, Any] | None:
    """Keys and public URLs of an image's thumbnail and preview (never its original)."""
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT thumbnail_key, preview_key, thumbnail_url, preview_url, uploaded_at IS NOT NULL AS published
           FROM images WHERE id = %s""", (image_id,)).fetchone()

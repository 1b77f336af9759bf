"""The vehicle tables: the only module that writes ``vehicles.origin_metadata`` (the backfill's
outcome) and ``vehicle_images``, and the queries that pick vehicles due for a trickle.

A vehicle *needs backfill* when it is public, lists image URLs, has no ``vehicle_images`` row,
is not marked ``images_backfilled`` and has not been given up on.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from assemblage_assets.partitions import NO_ORGANIZATION

# Every key the backfill writes into origin_metadata besides image_urls: replaced as a whole.
STATE_KEYS = [
    "images_backfilled",
    "images_backfilled_count",
    "images_backfilled_at",
    "images_backfill_failures",
    "images_backfill_status",
    "images_backfill_attempts",
    "images_backfill_next_attempt_at",
    "images_backfill_last_attempt_at",
]

# Same predicate as the partial index vehicles_image_backfill_idx (sql/0004_vehicles.sql).
_CANDIDATE = """v.is_public IS TRUE
      AND jsonb_typeof(v.origin_metadata -> 'image_urls') = 'array'
      AND v.origin_metadata -> 'images_backfilled' IS DISTINCT FROM 'true'::jsonb"""
NEEDS_BACKFILL = f"""{_CANDIDATE}
      AND v.origin_metadata -> 'image_urls' <> '[]'::jsonb
      AND v.origin_metadata ->> 'images_backfill_status' IS DISTINCT FROM 'failed'
      AND NOT EXISTS (SELECT 1 FROM vehicle_images vi WHERE vi.vehicle_id = v.id)"""
DUE = "coalesce((v.origin_metadata ->> 'images_backfill_next_attempt_at')::timestamptz, '-infinity') <= now()"


@dataclass(frozen=True)
class Vehicle:
    id: str
    organization_id: str | None
    urls: list[str]  # as listed, deduplicated; position = index here
    attempts: int  # failed trickles so far




def organization_filter(key: str) -> tuple[str, tuple[Any, ...]]:
    if key == NO_ORGANIZATION:
        return "v.organization_id IS NULL", ()
    try:
        return "v.organization_id = %s", (uuid.UUID(key),)
    except ValueError:
        raise ValueError(f"organization key must be a uuid or {NO_ORGANIZATION!r}, got {key!r}") from None


def due_counts(conn: psycopg.Connection) -> list[tuple[str, int]]:
    """(organization key, vehicles due for backfill now), the longest-waiting organization first."""
    rows = conn.execute(
        f"""SELECT coalesce(v.organization_id::text, %s) AS organization, count(*) AS n
            FROM vehicles v
            WHERE {NEEDS_BACKFILL} AND {DUE}
            GROUP BY 1
            ORDER BY min(v.created_at) NULLS LAST, 1""",
        (NO_ORGANIZATION,),
    ).fetchall()
    return [(r["organization"], r["n"]) for r in rows]



def listed_urls(metadata: dict[str, Any] | None) -> list[str]:
    """The vehicle's image URLs in listed order, deduplicated. Entries may be strings or
    ``{"url": ...}`` objects; anything else is kept as text so it fails visibly as invalid."""
    urls = []
    for item in (metadata or {}).get("image_urls") or []:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            item = item["url"]
        urls.append(item.strip() if isinstance(item, str) else json.dumps(item))
    return list(dict.fromkeys(urls))


def select_vehicles(conn: psycopg.Connection, organization: str, limit: int) -> list[Vehicle]:
    """Up to ``limit`` vehicles of ``organization`` due for backfill, oldest first."""
    where, params = organization_filter(organization)
    rows = conn.execute(
        f"""SELECT v.id::text AS id, v.organization_id::text AS organization_id, v.origin_metadata
            FROM vehicles v
            WHERE {where} AND {NEEDS_BACKFILL} AND {DUE}
            ORDER BY v.created_at NULLS LAST, v.id
            LIMIT %s""",
        (*params, limit),
    ).fetchall()
    vehicles = []
    for row in rows:
        meta = row["origin_metadata"] or {}
        attempts = meta.get("images_backfill_attempts")
        vehicles.append(
            Vehicle(row["id"], row["organization_id"], listed_urls(meta), attempts if isinstance(attempts, int) else 0)
        )
    return vehicles


_INSERT_IMAGE = """
    INSERT INTO vehicle_images (vehicle_id, source_url, position, object_key, image_url, thumbnail_key,
                                thumbnail_url, width, height, bytes, content_hash, mime_type)
    VALUES (%(vehicle_id)s, %(source_url)s, %(position)s, %(object_key)s, %(image_url)s, %(thumbnail_key)s,
            %(thumbnail_url)s, %(width)s, %(height)s, %(bytes)s, %(content_hash)s, %(mime_type)s)
    ON CONFLICT (vehicle_id, source_url) DO UPDATE SET
        position = EXCLUDED.position, object_key = EXCLUDED.object_key, image_url = EXCLUDED.image_url,
        thumbnail_key = EXCLUDED.thumbnail_key, thumbnail_url = EXCLUDED.thumbnail_url,
        width = EXCLUDED.width, height = EXCLUDED.height, bytes = EXCLUDED.bytes,
        content_hash = EXCLUDED.content_hash, mime_type = EXCLUDED.mime_type"""


def record_vehicle(
    conn: psycopg.Connection, vehicle_id: str, rows: list[dict[str, Any]], state: dict[str, Any]
) -> None:
    """The vehicle's images and its outcome in origin_metadata, together or not at all."""
    with conn.transaction():
        if rows:
            with conn.cursor() as cur:
                cur.executemany(_INSERT_IMAGE, [{**row, "vehicle_id": vehicle_id} for row in rows])
        conn.execute(
            """UPDATE vehicles
               SET origin_metadata = (coalesce(origin_metadata, '{}'::jsonb) - %s::text[]) || %s,
                   updated_at = now()
               WHERE id = %s""",
            (STATE_KEYS, Jsonb(state), vehicle_id),
        )



def monitoring(conn: psycopg.Connection, failure_limit: int = 20) -> dict[str, Any]:
    """The older monitoring queries (vehicles needing backfill, backfilled) plus retries, give-ups
    and the most recent failed URLs with their reasons."""
    counts = conn.execute(
        f"""SELECT
                count(*) FILTER (WHERE {NEEDS_BACKFILL}) AS needing_backfill,
                count(*) FILTER (WHERE {NEEDS_BACKFILL} AND {DUE}) AS due_now,
                count(*) FILTER (WHERE {NEEDS_BACKFILL}
                                 AND v.origin_metadata ->> 'images_backfill_status' = 'retrying') AS retrying,
                count(*) FILTER (WHERE v.origin_metadata ->> 'images_backfill_status' = 'failed') AS failed,
                count(*) FILTER (WHERE v.origin_metadata -> 'images_backfilled' = 'true'::jsonb) AS backfilled
            FROM vehicles v"""
    ).fetchone()
    images = conn.execute("SELECT count(*) AS n FROM vehicle_images").fetchone()["n"]
    failed_urls = conn.execute(
        """SELECT v.id::text AS vehicle_id, f ->> 'url' AS url, f ->> 'kind' AS kind, f ->> 'reason' AS reason,
                  coalesce(v.origin_metadata ->> 'images_backfill_status', 'backfilled') AS vehicle_status
           FROM vehicles v
           CROSS JOIN LATERAL jsonb_array_elements(
               CASE WHEN jsonb_typeof(v.origin_metadata -> 'images_backfill_failures') = 'array'
                    THEN v.origin_metadata -> 'images_backfill_failures' ELSE '[]'::jsonb END) AS f
           ORDER BY v.updated_at DESC NULLS LAST, v.id
           LIMIT %s""",
        (failure_limit,),
    ).fetchall()
    return {
        **dict(counts),
        "vehicle_images": images,
        "due_by_organization": dict(due_counts(conn)),
        "failed_urls": [dict(r) for r in failed_urls],
    }

"""Places of a shard: the EXIF GPS position of each image, reverse geocoded offline to the
nearest GeoNames place (city, first-level region, country code) by ``core.geocode``.

Runs in the ``derivatives`` stage after the images are derived, in the stage's own process (the
worker pool never loads the places). A shard without GPS positions to resolve costs one query
and never loads the geocoder. Writes go through ``catalog.record_places``; an image counts as
done once its ``latitude`` is set, with or without a place, so a rerun does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from assemblage_assets.core import geocode
from assemblage_assets.images import catalog

PAGE_SIZE = 500


@dataclass
class PlaceReport:
    located: int = 0  # positions resolved in this run
    placed: int = 0  # ... of which near a known place


def locate_shard(conn: psycopg.Connection, shard: str, page_size: int = PAGE_SIZE) -> PlaceReport:
    """Geocode every image of the shard with a GPS position not geocoded yet."""
    report = PlaceReport()
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        rows = images_to_locate(conn, shard, after, page_size)
        if not rows:
            return report
        positions = [(r["lat"], r["lon"]) for r in rows]
        found = geocode.geocoder().lookup(positions)
        with conn.transaction():
            catalog.record_places(conn, [
                (r["image_id"], r["lat"], r["lon"], *((p.city, p.region or None, p.country) if p else (None, None, None)))
                for r, p in zip(rows, found, strict=True)
            ])
        report.located += len(rows)
        report.placed += sum(p is not None for p in found)
        if len(rows) < page_size:
            return report
        after = rows[-1]["image_id"]


def images_to_locate(conn: psycopg.Connection, shard: str, after: str, limit: int) -> list[dict[str, Any]]:
    """Images of the shard whose EXIF GPS position was never geocoded, from image id ``after`` on."""
    return conn.execute(
        """SELECT DISTINCT ON (p.image_id) p.image_id::text AS image_id,
                  (i.exif_data->'gps'->>'lat')::float8 AS lat, (i.exif_data->'gps'->>'lon')::float8 AS lon
           FROM processing_log p JOIN images i ON i.id = p.image_id
           WHERE p.shard = %s AND p.image_id > %s::uuid AND i.latitude IS NULL
             AND jsonb_typeof(i.exif_data->'gps'->'lat') = 'number'
             AND jsonb_typeof(i.exif_data->'gps'->'lon') = 'number'
           ORDER BY p.image_id LIMIT %s""",
        (shard, after, limit),
    ).fetchall()


def place_counts(conn: psycopg.Connection, shard: str | None = None, limit: int = 10) -> dict[str, Any]:
    """How many images have a position and a place, and the ``limit`` most frequent places
    (of one shard, or of the whole catalogue)."""
    scope = """FROM images i WHERE i.latitude IS NOT NULL AND (%(shard)s::text IS NULL OR EXISTS (
                   SELECT 1 FROM processing_log p WHERE p.image_id = i.id AND p.shard = %(shard)s))"""
    totals = conn.execute(
        f"SELECT count(*) AS located, count(i.place_country) AS placed {scope}", {"shard": shard}
    ).fetchone()
    top = conn.execute(
        f"""SELECT i.place_city AS city, i.place_region AS region, i.place_country AS country, count(*) AS images
            {scope} AND i.place_country IS NOT NULL
            GROUP BY 1, 2, 3 ORDER BY images DESC, country, region, city LIMIT %(limit)s""",
        {"shard": shard, "limit": limit},
    ).fetchall()
    return {"located": int(totals["located"]), "placed": int(totals["placed"]), "top": [dict(r) for r in top]}


def place_label(city: str | None, region: str | None, country: str | None) -> str:
    """``Paris, Ile-de-France, FR``; empty parts left out."""
    return ", ".join(part for part in (city, region, country) if part)

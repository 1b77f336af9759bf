"""Queries behind the asset checks of ``r2_objects``: what the catalogue says is missing, and a
spot check that published objects really are in the store."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from assemblage_assets.constants import DERIVED_STATUSES, PUBLISHED_STATUSES, ImageStatus, preview_key, thumbnail_key
from resources.object_store import ObjectStore

DEFAULT_SPOT_CHECK = 20  # images per shard whose three objects are looked up (3 HEADs each)


@dataclass(frozen=True)
class ObjectGaps:
    """Images of a shard by publication state (an image counts once, whatever its paths)."""

    images: int  # processed, uploaded or indexed
    unpublished: int  # still waiting for r2_objects
    uploaded_without_urls: int  # status says published but a URL is missing: a catalogue fault

    @property
    def gaps(self) -> int:
        return self.unpublished + self.uploaded_without_urls


@dataclass
class SpotCheck:
    checked: int = 0  # images looked up
    missing: list[str] = field(default_factory=list)  # keys the store does not have


def object_gaps(conn: psycopg.Connection, shard: str) -> ObjectGaps:
    row = conn.cursor(row_factory=dict_row).execute(
        """SELECT count(*) AS images,
                  count(*) FILTER (WHERE s.any_processed) AS unpublished,
                  count(*) FILTER (WHERE NOT s.any_processed AND (i.uploaded_at IS NULL OR i.original_url IS NULL
                                   OR i.thumbnail_url IS NULL OR i.preview_url IS NULL)) AS uploaded_without_urls
           FROM (SELECT image_id, bool_or(status = %s) AS any_processed
                 FROM processing_log WHERE shard = %s AND status = ANY(%s)
                 GROUP BY image_id) s
           JOIN images i ON i.id = s.image_id""",
        (ImageStatus.PROCESSED.value, shard, list(DERIVED_STATUSES)),
    ).fetchone()
    return ObjectGaps(row["images"], row["unpublished"], row["uploaded_without_urls"])


def spot_check_objects(
    conn: psycopg.Connection, shard: str, store: ObjectStore, sample: int = DEFAULT_SPOT_CHECK
) -> SpotCheck:
    """HEAD the three objects of up to ``sample`` published images of the shard, picked at random
    so repeated checks cover the shard over time without listing the bucket."""
    result = SpotCheck()
    if sample <= 0:
        return result
    rows = conn.cursor(row_factory=dict_row).execute(
        """SELECT i.id::text AS image_id, i.original_key, i.thumbnail_key, i.preview_key
           FROM images i
           WHERE i.uploaded_at IS NOT NULL AND EXISTS (
               SELECT 1 FROM processing_log p
               WHERE p.image_id = i.id AND p.shard = %s AND p.status = ANY(%s))
           ORDER BY random() LIMIT %s""",
        (shard, list(PUBLISHED_STATUSES), sample),
    ).fetchall()
    for row in rows:
        result.checked += 1
        expected = [
            ("private", row["original_key"]),
            ("public", row["thumbnail_key"] or thumbnail_key(row["image_id"])),
            ("public", row["preview_key"] or preview_key(row["image_id"])),
        ]
        for visibility, relative in expected:
            key = store.key(relative)
            if store.head_size(visibility, key) is None:
                result.missing.append(key)
    return result

"""Reads and writes of the catalogue tables (``images``, ``processing_log``).

Every write is an upsert keyed on content (``images.id``) or source path
(``processing_log.local_path``), so reruns and crash-resumes never duplicate rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from assemblage_assets.derive import DerivedImage, preview_key, thumbnail_key
from assemblage_assets.probe import ProbeResult
from assemblage_assets.scan import ScanEntry

STATUSES = ("pending", "processed", "uploaded", "indexed", "failed", "rejected")


def known_files(conn: psycopg.Connection, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Size, mtime and status already recorded for these paths."""
    rows = conn.execute(
        "SELECT local_path, file_size, file_mtime_ns, status FROM processing_log WHERE local_path = ANY(%s)",
        (list(paths),),
    ).fetchall()
    return {row["local_path"]: row for row in rows}


def is_unchanged(entry: ScanEntry, known: dict[str, Any] | None) -> bool:
    return (
        known is not None
        and known["file_size"] == entry.size
        and known["file_mtime_ns"] == entry.mtime_ns
    )


def original_key(image_id: str, ext: str, captured_at: datetime | None) -> str:
    """``original/{yyyy}/{mm}/{id}.{ext}``: capture month when EXIF has it, else first-seen month."""
    when = captured_at or datetime.now(UTC)
    return f"original/{when:%Y}/{when:%m}/{image_id}.{ext}"


def record_scanned(conn: psycopg.Connection, shard: str, scanned: Iterable[tuple[ScanEntry, ProbeResult]]) -> None:
    """Upsert ``images`` (first writer wins) and ``processing_log`` for a batch of probed files."""
    image_rows = []
    log_rows = []
    for entry, result in scanned:
        image_id = str(result.image_id) if result.image_id else None
        if result.status == "pending" and image_id and result.ext:
            image_rows.append((
                image_id, result.content_hash, result.bytes, result.width, result.height,
                result.format, result.mode, result.frame_count, Jsonb(result.exif),
                result.captured_at, result.ext, original_key(image_id, result.ext, result.captured_at),
            ))
        log_rows.append((
            entry.db_path, shard, image_id, result.status, result.error_kind,
            result.error_message, entry.size, entry.mtime_ns,
        ))
    with conn.transaction():
        with conn.cursor() as cur:
            if image_rows:
                cur.executemany(
                    """INSERT INTO images (id, content_hash, bytes, width, height, format, mode,
                                           frame_count, exif_data, captured_at, original_ext, original_key)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (id) DO NOTHING""",
                    image_rows,
                )
            if log_rows:
                # A changed file starts over; an unchanged one never reaches here.
                cur.executemany(
                    """INSERT INTO processing_log (local_path, shard, image_id, status, error_kind,
                                                   error_message, attempts, file_size, file_mtime_ns,
                                                   processed_at)
                       VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s,
                               CASE WHEN %s IN ('failed', 'rejected') THEN now() END)
                       ON CONFLICT (local_path) DO UPDATE SET
                           shard = EXCLUDED.shard, image_id = EXCLUDED.image_id,
                           status = EXCLUDED.status, error_kind = EXCLUDED.error_kind,
                           error_message = EXCLUDED.error_message,
                           attempts = processing_log.attempts + 1,
                           file_size = EXCLUDED.file_size, file_mtime_ns = EXCLUDED.file_mtime_ns,
                           processed_at = EXCLUDED.processed_at, updated_at = now()""",
                    [row + (row[3],) for row in log_rows],
                )


def pending_images(conn: psycopg.Connection, shard: str, page_size: int = 500) -> Iterator[dict[str, Any]]:
    """One source path per distinct pending image of the shard, paged by image id (keyset)."""
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        rows = conn.execute(
            """SELECT DISTINCT ON (p.image_id) p.image_id::text AS image_id, p.local_path,
                      i.derived_at IS NOT NULL AS already_derived
               FROM processing_log p JOIN images i ON i.id = p.image_id
               WHERE p.shard = %s AND p.status = 'pending' AND p.image_id > %s::uuid
               ORDER BY p.image_id, p.local_path LIMIT %s""",
            (shard, after, page_size),
        ).fetchall()
        yield from rows
        if len(rows) < page_size:
            return
        after = rows[-1]["image_id"]


def count_pending(conn: psycopg.Connection, shard: str) -> int:
    row = conn.execute(
        "SELECT count(DISTINCT image_id) AS n FROM processing_log WHERE shard = %s AND status = 'pending'",
        (shard,),
    ).fetchone()
    return int(row["n"])


def record_derived(conn: psycopg.Connection, results: Sequence[DerivedImage]) -> None:
    """Store derivative locations and advance every pending path of each image in one transaction."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    with conn.transaction():
        with conn.cursor() as cur:
            if ok:
                cur.executemany(
                    """UPDATE images SET palette = %s, frame_count = GREATEST(frame_count, %s),
                              thumbnail_key = %s, thumbnail_width = %s, thumbnail_height = %s,
                              preview_key = %s, preview_width = %s, preview_height = %s,
                              derived_at = now(), updated_at = now()
                       WHERE id = %s""",
                    [
                        (Jsonb(r.palette), r.frame_count, thumbnail_key(r.image_id), *r.thumbnail_size,
                         preview_key(r.image_id), *r.preview_size, r.image_id)
                        for r in ok
                    ],
                )
                cur.execute(
                    """UPDATE processing_log SET status = 'processed', error_kind = NULL,
                              error_message = NULL, processed_at = now(), updated_at = now()
                       WHERE image_id = ANY(%s::uuid[]) AND status = 'pending'""",
                    ([r.image_id for r in ok],),
                )
            if failed:
                cur.executemany(
                    """UPDATE processing_log SET status = 'failed', error_kind = %s, error_message = %s,
                              attempts = attempts + 1, processed_at = now(), updated_at = now()
                       WHERE image_id = %s AND status = 'pending'""",
                    [(r.error_kind, r.error_message, r.image_id) for r in failed],
                )


def mark_processed(conn: psycopg.Connection, image_ids: Sequence[str]) -> None:
    """Advance paths whose image was already derived (same content seen under another path)."""
    conn.execute(
        """UPDATE processing_log SET status = 'processed', processed_at = now(), updated_at = now()
           WHERE image_id = ANY(%s::uuid[]) AND status = 'pending'""",
        (list(image_ids),),
    )


def status_counts(conn: psycopg.Connection, shard: str | None = None) -> dict[str, int]:
    rows = conn.execute(
        """SELECT status, count(*) AS n FROM processing_log
           WHERE %(shard)s::text IS NULL OR shard = %(shard)s GROUP BY status""",
        {"shard": shard},
    ).fetchall()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def failures(conn: psycopg.Connection, shard: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    return conn.execute(
        """SELECT local_path, shard, status, error_kind, error_message, attempts FROM processing_log
           WHERE status IN ('failed', 'rejected') AND (%(shard)s::text IS NULL OR shard = %(shard)s)
           ORDER BY status, shard, local_path LIMIT %(limit)s""",
        {"shard": shard, "limit": limit},
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

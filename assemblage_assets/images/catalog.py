"""The catalogue: the only module that writes ``images`` and ``processing_log``.

Every status change of a source path is a function here (statuses: ``constants.ImageStatus``):
scanned -> pending/failed/rejected, derived -> processed, published -> uploaded, embedded ->
indexed, and the ways back (requeued for derivation, failed). Other areas call these
functions; none writes the two tables itself. Every write is an upsert keyed on content
(``images.id``) or source path (``processing_log.local_path``), or an UPDATE guarded by the
status it leaves, so reruns and crash-resumes never duplicate rows or skip a transition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from assemblage_assets.constants import (
    NOT_INGESTED_STATUSES,
    ImageStatus,
    original_key,
    preview_key,
    thumbnail_key,
)

if TYPE_CHECKING:  # only for annotations: the stages import this module, not the other way round
    from assemblage_assets.images.derive import DerivedImage
    from assemblage_assets.images.probe import ProbeResult
    from assemblage_assets.images.scan import ScanEntry


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


def known_entries(conn: psycopg.Connection, uris: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Size, change marker and status already recorded for these remote entries (URIs)."""
    rows = conn.execute(
        "SELECT local_path, file_size, source_marker, status FROM processing_log WHERE local_path = ANY(%s)",
        (list(uris),),
    ).fetchall()
    return {row["local_path"]: row for row in rows}


def record_scanned_entries(
    conn: psycopg.Connection,
    shard: str,
    scanned: Sequence[tuple[ScanEntry, ProbeResult, str | None]],
    owner: str | None = None,
) -> None:
    """``record_scanned`` for remote entries, with each one's change marker in the same
    transaction (None: retry it next scan, e.g. after a transient download failure)."""
    with conn.transaction():
        record_scanned(conn, shard, [(entry, result) for entry, result, _ in scanned], owner)
        conn.cursor().executemany(
            "UPDATE processing_log SET source_marker = %s WHERE local_path = %s",
            [(marker, entry.db_path) for entry, _, marker in scanned],
        )


def record_scanned(
    conn: psycopg.Connection, shard: str, scanned: Iterable[tuple[ScanEntry, ProbeResult]], owner: str | None = None
) -> None:
    """Upsert ``images`` (first writer wins; an image without an owner takes the entry's owner,
    else ``owner``) and ``processing_log`` for a batch of probed files."""
    image_rows = []
    log_rows = []
    for entry, result in scanned:
        image_id = str(result.image_id) if result.image_id else None
        if result.status == "pending" and image_id and result.ext:
            image_rows.append((
                image_id, result.content_hash, result.bytes, result.width, result.height,
                result.format, result.mode, result.frame_count, Jsonb(result.exif),
                result.captured_at, result.ext, original_key(image_id, result.ext, result.captured_at),
                entry.owner or owner, result.captured_at_source,
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
                                           frame_count, exif_data, captured_at, original_ext, original_key, owner,
                                           captured_at_source)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, updated_at = now()
                       WHERE images.owner IS NULL AND EXCLUDED.owner IS NOT NULL""",
                    image_rows,
                )
            if log_rows:
                # A changed file starts over; an unchanged one never reaches here.
                cur.executemany(
                    """INSERT INTO processing_log (local_path, shard, image_id, status, error_kind,
                                                   error_message, attempts, file_size, file_mtime_ns,
                                                   processed_at)
                       VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s,
                               CASE WHEN %s = ANY(%s) THEN now() END)
                       ON CONFLICT (local_path) DO UPDATE SET
                           shard = EXCLUDED.shard, image_id = EXCLUDED.image_id,
                           status = EXCLUDED.status, error_kind = EXCLUDED.error_kind,
                           error_message = EXCLUDED.error_message,
                           attempts = processing_log.attempts + 1,
                           file_size = EXCLUDED.file_size, file_mtime_ns = EXCLUDED.file_mtime_ns,
                           processed_at = EXCLUDED.processed_at, updated_at = now()""",
                    [row + (row[3], list(NOT_INGESTED_STATUSES)) for row in log_rows],
                )


def record_deleted(conn: psycopg.Connection, paths: Sequence[str], kind: str = "deleted") -> None:
    """Paths whose file is gone from the source become ``failed`` (``kind``). Their image, its
    objects and vectors stay (another path may hold the same content); size and mtime are
    cleared so a file that comes back at the path is probed again."""
    if paths:
        conn.execute(
            """UPDATE processing_log SET status = %s, error_kind = %s,
                      error_message = 'file no longer in the source (deleted or moved); its image stays in the catalogue',
                      file_size = NULL, file_mtime_ns = NULL, updated_at = now()
               WHERE local_path = ANY(%s)""",
            (ImageStatus.FAILED.value, kind, sorted(paths)),
        )


def pending_images(conn: psycopg.Connection, shard: str, page_size: int = 500) -> Iterator[dict[str, Any]]:
    """One source path per distinct pending image of the shard, paged by image id (keyset)."""
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        rows = conn.execute(
            """SELECT DISTINCT ON (p.image_id) p.image_id::text AS image_id, p.local_path,
                      i.derived_at IS NOT NULL AS already_derived
               FROM processing_log p JOIN images i ON i.id = p.image_id
               WHERE p.shard = %s AND p.status = %s AND p.image_id > %s::uuid
               ORDER BY p.image_id, p.local_path LIMIT %s""",
            (shard, ImageStatus.PENDING.value, after, page_size),
        ).fetchall()
        yield from rows
        if len(rows) < page_size:
            return
        after = rows[-1]["image_id"]


def count_pending(conn: psycopg.Connection, shard: str) -> int:
    row = conn.execute(
        "SELECT count(DISTINCT image_id) AS n FROM processing_log WHERE shard = %s AND status = %s",
        (shard, ImageStatus.PENDING.value),
    ).fetchone()
    return int(row["n"])


def record_derived(conn: psycopg.Connection, results: Sequence[DerivedImage]) -> None:
    """Store derivative locations and advance every pending path of each image in one transaction."""
    # Sorted: two runs deriving the same images then lock rows in one order and cannot deadlock.
    ok = sorted((r for r in results if r.ok), key=lambda r: r.image_id)
    failed = sorted((r for r in results if not r.ok), key=lambda r: r.image_id)
    with conn.transaction():
        with conn.cursor() as cur:
            if ok:
                cur.executemany(
                    """UPDATE images SET palette = %s, frame_count = GREATEST(frame_count, %s),
                              thumbnail_key = %s, thumbnail_width = %s, thumbnail_height = %s,
                              preview_key = %s, preview_width = %s, preview_height = %s,
                              thumbhash = %s, phash = %s, dhash = %s, derived_at = now(), updated_at = now()
                       WHERE id = %s""",
                    [
                        (Jsonb(r.palette), r.frame_count, r.thumbnail_key or thumbnail_key(r.image_id), *r.thumbnail_size,
                         preview_key(r.image_id), *r.preview_size, r.thumbhash, r.phash, r.dhash, r.image_id)
                        for r in ok
                    ],
                )
                cur.execute(
                    """UPDATE processing_log SET status = %s, error_kind = NULL,
                              error_message = NULL, processed_at = now(), updated_at = now()
                       WHERE image_id = ANY(%s::uuid[]) AND status = %s""",
                    (ImageStatus.PROCESSED.value, [r.image_id for r in ok], ImageStatus.PENDING.value),
                )
            if failed:
                cur.executemany(
                    """UPDATE processing_log SET status = %s, error_kind = %s, error_message = %s,
                              attempts = attempts + 1, processed_at = now(), updated_at = now()
                       WHERE image_id = %s AND status = %s""",
                    [(ImageStatus.FAILED.value, r.error_kind, r.error_message, r.image_id, ImageStatus.PENDING.value)
                     for r in failed],
                )


def mark_processed(conn: psycopg.Connection, image_ids: Sequence[str]) -> None:
    """Advance paths whose image was already derived (same content seen under another path)."""
    conn.execute(
        """UPDATE processing_log SET status = %s, processed_at = now(), updated_at = now()
           WHERE image_id = ANY(%s::uuid[]) AND status = %s""",
        (ImageStatus.PROCESSED.value, list(image_ids), ImageStatus.PENDING.value),
    )


# --- publication (r2_objects) ----------------------------------------------------------------------


def record_published(
    conn: psycopg.Connection, published: Sequence[tuple[str, tuple[str, str, str]]]
) -> None:
    """(image id, (original, thumbnail, preview) URLs): all three objects are confirmed stored.
    Records the URLs and advances every ``processed`` path of the image to ``uploaded``."""
    if not published:
        return
    published = sorted(published)  # one lock order for every writer (see record_derived)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """UPDATE images SET original_url = %s, thumbnail_url = %s, preview_url = %s,
                      uploaded_at = now(), updated_at = now()
               WHERE id = %s""",
            [(*urls, image_id) for image_id, urls in published],
        )
        cur.execute(
            """UPDATE processing_log SET status = %s, error_kind = NULL, error_message = NULL, updated_at = now()
               WHERE image_id = ANY(%s::uuid[]) AND status = %s""",
            (ImageStatus.UPLOADED.value, [image_id for image_id, _ in published], ImageStatus.PROCESSED.value),
        )


def record_publish_failed(conn: psycopg.Connection, failed: Sequence[tuple[str, str, str]]) -> None:
    """(image id, error kind, message): the image cannot be published. Its paths become
    ``failed`` and its old URLs no longer hold."""
    if not failed:
        return
    failed = sorted(failed)  # one lock order for every writer (see record_derived)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """UPDATE processing_log SET status = %s, error_kind = %s, error_message = %s,
                          attempts = attempts + 1, updated_at = now()
                   WHERE image_id = %s AND status = ANY(%s)""",
            [
                (ImageStatus.FAILED.value, kind, message, image_id, [ImageStatus.PROCESSED.value, ImageStatus.UPLOADED.value])
                for image_id, kind, message in failed
            ],
        )
        cur.executemany(
            """UPDATE images SET uploaded_at = NULL, original_url = NULL, thumbnail_url = NULL,
                          preview_url = NULL, updated_at = now() WHERE id = %s""",
            [(image_id,) for image_id, _, _ in failed],
        )


def requeue_for_derivation(conn: psycopg.Connection, image_ids: Sequence[str]) -> None:
    """Images whose derivatives are neither cached nor stored go back to ``pending``, so the
    next ``derivatives`` run makes them again."""
    if not image_ids:
        return
    conn.execute(
        """UPDATE processing_log SET status = %s, error_kind = 'derivative-missing',
                  error_message = 'thumbnail or preview missing from the cache and the store; derived again next run',
                  updated_at = now()
           WHERE image_id = ANY(%s::uuid[]) AND status = ANY(%s)""",
        (ImageStatus.PENDING.value, list(image_ids), [ImageStatus.PROCESSED.value, ImageStatus.UPLOADED.value]),
    )


# --- near-duplicates (SKIP_NEAR_DUPLICATES) --------------------------------------------------------


def mark_near_duplicates(conn: psycopg.Connection, notes: Sequence[tuple[str, str]]) -> int:
    """(image id, message): ``processed`` paths of a near-duplicate of a published image become
    ``duplicate``: never published nor embedded (a published path is left as it is)."""
    if not notes:
        return 0
    notes = sorted(notes)  # one lock order for every writer (see record_derived)
    with conn.cursor() as cur:
        cur.executemany(
            """UPDATE processing_log SET status = %s, error_kind = 'near-duplicate', error_message = %s,
                      updated_at = now()
               WHERE image_id = %s AND status = %s""",
            [(ImageStatus.DUPLICATE.value, message, image_id, ImageStatus.PROCESSED.value) for image_id, message in notes],
        )
        return cur.rowcount


def release_near_duplicates(conn: psycopg.Connection, shard: str) -> int:
    """Skip mode is off: the shard's ``duplicate`` paths go back to ``processed`` to be published."""
    cur = conn.execute(
        """UPDATE processing_log SET status = %s, error_kind = NULL, error_message = NULL, updated_at = now()
           WHERE shard = %s AND status = %s""",
        (ImageStatus.PROCESSED.value, shard, ImageStatus.DUPLICATE.value),
    )
    return cur.rowcount


# --- embeddings ----------------------------------------------------------------------------------


def mark_indexed(conn: psycopg.Connection, shard: str, model: str) -> int:
    """``uploaded`` paths of the shard whose image has a vector for ``model`` become ``indexed``.
    (``processed`` paths keep their status so ``r2_objects`` still publishes them; the next
    ``embeddings`` run of the shard promotes them.)"""
    cur = conn.execute(
        """UPDATE processing_log p SET status = %s, updated_at = now()
           WHERE p.shard = %s AND p.status = %s
             AND EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %s)""",
        (ImageStatus.INDEXED.value, shard, ImageStatus.UPLOADED.value, model),
    )
    return cur.rowcount


def record_captions(conn: psycopg.Connection, captions: Sequence[tuple[str, str, str]]) -> None:
    """(caption, caption model, image id) from a captioning provider."""
    if captions:
        captions = sorted(captions, key=lambda c: c[2])  # by image id: one lock order for every writer
        conn.cursor().executemany(
            "UPDATE images SET caption = %s, caption_model = %s, updated_at = now() WHERE id = %s", captions
        )


def record_places(
    conn: psycopg.Connection, places: Sequence[tuple[str, float, float, str | None, str | None, str | None]]
) -> None:
    """(image id, latitude, longitude, city, region, country code) from reverse geocoding of the
    EXIF GPS position (``images/places.py``); no place near: None for the last three."""
    if places:
        places = sorted(places, key=lambda p: p[0])  # one lock order for every writer (see record_derived)
        conn.cursor().executemany(
            """UPDATE images SET latitude = %s, longitude = %s, place_city = %s, place_region = %s,
                      place_country = %s, updated_at = now() WHERE id = %s""",
            [(lat, lon, city, region, country, image_id) for image_id, lat, lon, city, region, country in places],
        )


def record_hashes(conn: psycopg.Connection, hashes: Sequence[tuple[str, int, int, str]]) -> None:
    """(image id, pHash, dHash, ThumbHash) backfilled for an image derived before those columns
    (``images/hash_backfill.py``). A value already set stays: derive's own hashes win."""
    if hashes:
        hashes = sorted(hashes)  # one lock order for every writer (see record_derived)
        conn.cursor().executemany(
            """UPDATE images SET phash = COALESCE(phash, %s), dhash = COALESCE(dhash, %s),
                      thumbhash = COALESCE(thumbhash, %s), updated_at = now() WHERE id = %s""",
            [(phash, dhash, thumbhash, image_id) for image_id, phash, dhash, thumbhash in hashes],
        )


def note_errors(conn: psycopg.Connection, kind: str, notes: Sequence[tuple[str, str]]) -> None:
    """(image id, message): a later stage gave up on the image (``kind``, e.g. ``embedding``).
    The paths keep their status; ``error_kind``/``error_message`` say why."""
    if notes:
        notes = sorted(notes)  # one lock order for every writer (see record_derived)
        conn.cursor().executemany(
            """UPDATE processing_log SET error_kind = %s, error_message = %s, updated_at = now()
               WHERE image_id = %s AND status <> ALL(%s)""",
            [(kind, message, image_id, list(NOT_INGESTED_STATUSES)) for image_id, message in notes],
        )


def clear_errors(conn: psycopg.Connection, kind: str, image_ids: Sequence[str]) -> None:
    """Remove the ``kind`` notes of ``note_errors`` (the image succeeded, or was reset)."""
    if image_ids:
        conn.execute(
            """UPDATE processing_log SET error_kind = NULL, error_message = NULL, updated_at = now()
               WHERE image_id = ANY(%s::uuid[]) AND error_kind = %s AND status <> ALL(%s)""",
            (list(image_ids), kind, list(NOT_INGESTED_STATUSES)),
        )

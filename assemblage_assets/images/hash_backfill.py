"""Perceptual hashes and ThumbHash for images derived before those columns existed.

``derivatives`` computes pHash/dHash (``core.perceptual``) and the ThumbHash placeholder
(``core.thumbhash``) from the in-memory thumbnail; an image derived earlier has NULLs there, so
``duplicates`` never compares it and the browse page has no placeholder for it. This fills them
per shard from what is still around. The original (a local file or a staged copy) comes first:
hashed through derive's own path it gives derive's bits exactly. Decoding the stored thumbnail
again (the WebP is lossy) moves pHash by up to 2 bits but dHash by up to 8 of its 14-bit
threshold (``benchmarks/hash_sources.py``, figures in docs/duplicates.md), so the thumbnail, from
the derivative cache and then the object store, is only the fallback for an original that is
gone (a released staged copy, a deleted file).

Pages of the shard's images are read by id (keyset), so a 5M catalogue is never listed in
memory; values already set are never overwritten (a concurrent derive wins), so reruns are
idempotent. An image none of whose sources can be read gets a ``hash-backfill`` note on its paths
(``catalog.note_errors``, status unchanged) and is tried again on the next run.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image

from assemblage_assets.constants import DERIVED_STATUSES, ImageStatus, thumbnail_key
from assemblage_assets.core.imaging import DerivativeSpec, decode_upright, fit
from assemblage_assets.core.perceptual import perceptual_hashes
from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.core.thumbhash import image_thumbhash
from assemblage_assets.images import catalog, staging

ERROR_KIND = "hash-backfill"
PAGE = 200
_ANY_SIZE = 1 << 16  # decode a stored thumbnail whole (no JPEG draft)

# Reads an object of the store (full key) or returns None when it is not there.
StoreReader = Callable[[str], bytes | None]

_MISSING = """
    SELECT i.id::text AS image_id, i.thumbnail_key, i.bytes, i.uploaded_at IS NOT NULL AS published,
           array_agg(p.local_path ORDER BY p.local_path) AS paths
    FROM images i JOIN processing_log p ON p.image_id = i.id
    WHERE p.shard = %(shard)s AND p.status = ANY(%(statuses)s) AND i.id > %(after)s::uuid
      AND (i.phash IS NULL OR i.dhash IS NULL OR i.thumbhash IS NULL)
    GROUP BY i.id ORDER BY i.id LIMIT %(limit)s"""


@dataclass(frozen=True)
class Hashes:
    phash: int
    dhash: int
    thumbhash: str


def hashes_of(thumbnail: Image.Image) -> Hashes:
    """The three values ``derive_image`` stores, of an upright thumbnail-sized image."""
    hashes = perceptual_hashes(thumbnail)
    return Hashes(hashes.phash, hashes.dhash, image_thumbhash(thumbnail))


def hashes_from_thumbnail(data: bytes) -> Hashes:
    """From the bytes of a stored thumbnail (written upright by ``derivatives``)."""
    image, _ = decode_upright(io.BytesIO(data), _ANY_SIZE)
    return hashes_of(image)


def hashes_from_original(source: str | Path, spec: DerivativeSpec) -> Hashes:
    """From the original, through derive's own path: identical to what ``derive_image`` stores."""
    Image.MAX_IMAGE_PIXELS = spec.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upright, _ = decode_upright(str(source), spec.preview_long_edge)
    preview = fit(upright, spec.preview_long_edge, spec.preview_long_edge)
    return hashes_of(fit(preview, spec.thumbnail_box, spec.thumbnail_box))


def count_missing(conn: psycopg.Connection, shard: str) -> int:
    """Derived images of the shard with a hash or the ThumbHash missing."""
    row = conn.execute(
        """SELECT count(DISTINCT i.id) AS n FROM images i JOIN processing_log p ON p.image_id = i.id
           WHERE p.shard = %s AND p.status = ANY(%s)
             AND (i.phash IS NULL OR i.dhash IS NULL OR i.thumbhash IS NULL)""",
        (shard, _statuses()),
    ).fetchone()
    return int(row["n"])


def has_work(conn: psycopg.Connection, shard: str) -> bool:
    """Whether a run would backfill something: a derived image of the shard lacks a hash and no
    earlier attempt found its sources unreadable (those wait for the shard's next run for another
    reason, so a lost original alone never makes a settled shard run again and again)."""
    row = conn.execute(
        """SELECT EXISTS (
               SELECT 1 FROM processing_log p JOIN images i ON i.id = p.image_id
               WHERE p.shard = %s AND p.status = ANY(%s)
                 AND (i.phash IS NULL OR i.dhash IS NULL OR i.thumbhash IS NULL)
                 AND NOT EXISTS (SELECT 1 FROM processing_log q WHERE q.image_id = i.id AND q.error_kind = %s)
           ) AS work""",
        (shard, _statuses(), ERROR_KIND),
    ).fetchone()
    return bool(row["work"])


def _statuses() -> list[str]:
    return [*DERIVED_STATUSES, ImageStatus.DUPLICATE.value]


def _missing_page(conn: psycopg.Connection, shard: str, after: str, limit: int) -> list[dict[str, Any]]:
    return conn.execute(
        _MISSING, {"shard": shard, "statuses": _statuses(), "after": after, "limit": limit}
    ).fetchall()


def _attempt(problems: list[str], source: str, compute: Callable[[], Hashes]) -> Hashes | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compute()
    except FileNotFoundError:
        problems.append(f"{source}: missing")
    except Exception as exc:  # noqa: BLE001 - any decode or read error: try the next source
        problems.append(f"{source}: {type(exc).__name__}: {exc}")
    return None


def _from_files(
    row: dict[str, Any], cache_dir: Path, spec: DerivativeSpec, staging_dir: Path | None
) -> tuple[Hashes | None, str, list[str]]:
    """The original, then the cached thumbnail: (hashes or None, where from, what went wrong).
    Runs in a worker process (plain, picklable arguments)."""
    problems: list[str] = []
    for path in row["paths"]:
        source = staging.local_file(path, staging_dir)
        if not source.is_file():
            problems.append(f"original {path}: missing")
            continue
        if row["bytes"] is not None and source.stat().st_size != row["bytes"]:
            problems.append(f"original {path}: changed since it was scanned")  # other content now
            continue
        found = _attempt(problems, f"original {path}", lambda s=source: hashes_from_original(s, spec))
        if found:
            return found, "original", problems
    cached = cache_dir / _thumbnail(row)
    if not cached.is_file():
        problems.append("cached thumbnail: missing")
    elif found := _attempt(problems, "cached thumbnail", lambda: hashes_from_thumbnail(cached.read_bytes())):
        return found, "cache", problems
    return None, "", problems


def _thumbnail(row: dict[str, Any]) -> str:
    return row["thumbnail_key"] or thumbnail_key(row["image_id"])


def _hash_page(
    page: list[dict[str, Any]], pool: ProcessPoolExecutor | None, cache_dir: Path, spec: DerivativeSpec,
    staging_dir: Path | None, read_store: StoreReader | None, store_key: Callable[[str], str],
) -> Iterator[tuple[dict[str, Any], Hashes | None, str, str]]:
    """(row, hashes or None, where from, problems) per image; the store is read in this process."""
    args = (cache_dir, spec, staging_dir)
    if pool is None:
        results: Iterator[tuple[Hashes | None, str, list[str]]] = (_from_files(row, *args) for row in page)
    else:
        results = pool.map(_from_files, page, *([a] * len(page) for a in args))
    for row, (found, origin, problems) in zip(page, results, strict=True):
        if found is None and read_store is not None and row["published"]:

            def from_store(row: dict[str, Any] = row) -> Hashes:
                data = read_store(store_key(_thumbnail(row)))
                if data is None:
                    raise FileNotFoundError(_thumbnail(row))
                return hashes_from_thumbnail(data)

            if found := _attempt(problems, "stored thumbnail", from_store):
                origin = "store"
        yield row, found, origin, "; ".join(problems)


def _pool(workers: int) -> ProcessPoolExecutor | None:
    # spawn, not fork: Dagster's process has threads (as in images.derive)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None


def backfill_shard(
    conn: psycopg.Connection,
    shard: str,
    *,
    cache_dir: Path,
    spec: DerivativeSpec,
    read_store: StoreReader | None = None,
    store_key: Callable[[str], str] = lambda key: key,
    staging_dir: Path | None = None,
    workers: int = 1,
    page_size: int = PAGE,
    progress: Progress | None = None,
) -> StageReport:
    """Fill the missing pHash/dHash/ThumbHash of the shard's derived images, decoding in
    ``workers`` processes (0: one per core; started only when there is something to do). Counts:
    ``backfilled`` (images written) and where from (``from_original``, ``from_cache``,
    ``from_store``), ``failed`` (no source readable; noted on the image's paths)."""
    report = StageReport()
    started = time.perf_counter()
    for name in ("backfilled", "from_original", "from_cache", "from_store", "failed"):
        report.counts[name] = 0
    page = _missing_page(conn, shard, "00000000-0000-0000-0000-000000000000", page_size)
    if not page:
        return report
    total = count_missing(conn, shard)
    with ExitStack() as stack:
        pool = _pool(workers or os.cpu_count() or 1)
        if pool is not None:
            stack.enter_context(pool)
        while page:
            _write_page(conn, _hash_page(page, pool, cache_dir, spec, staging_dir, read_store, store_key), report)
            if progress:
                done = report.counts["backfilled"] + report.counts["failed"]
                elapsed = time.perf_counter() - started
                eta = elapsed / done * max(0, total - done) if done else 0.0
                progress(f"shard {shard}: hashes backfilled for {report.counts['backfilled']:,}/{total:,} images "
                         f"({report.counts['failed']:,} without a readable source), ETA {eta:,.0f} s")
            if len(page) < page_size:
                break
            page = _missing_page(conn, shard, page[-1]["image_id"], page_size)
    report.seconds = time.perf_counter() - started
    return report


def _write_page(
    conn: psycopg.Connection, results: Iterator[tuple[dict[str, Any], Hashes | None, str, str]], report: StageReport
) -> None:
    written: list[tuple[str, int, int, str]] = []
    notes: list[tuple[str, str]] = []
    for row, hashes, origin, problem in results:
        if hashes is None:
            report.counts["failed"] += 1
            message = f"no perceptual hash: {problem}"
            report.add_failure(row["paths"][0], ERROR_KIND, message)
            notes.append((row["image_id"], message))
            continue
        written.append((row["image_id"], hashes.phash, hashes.dhash, hashes.thumbhash))
        report.counts[f"from_{origin}"] += 1
    with conn.transaction():
        catalog.record_hashes(conn, written)
        catalog.clear_errors(conn, ERROR_KIND, [w[0] for w in written])
        catalog.note_errors(conn, ERROR_KIND, notes)
    report.counts["backfilled"] += len(written)

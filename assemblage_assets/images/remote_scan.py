"""``raw_files`` of a shard of a remote source (S3 bucket, Dropbox): stream the listing page by
page, skip entries whose size and change marker match their row (no GET at all), download the
rest with bounded concurrency into the staging folder, then probe and record them exactly like
local files (same content id, same statuses).

Per-entry faults never abort the shard: an entry deleted since listing, forbidden, over the size
cap, truncated or throttled past its retries is recorded ``failed`` with its reason (transient
ones without a marker, so the next scan tries again). Entries that do not fit in the staging
budget are left unrecorded (``deferred``): the next run, after this one's are published, takes
them. Only a configuration error (``SourceConfigError``) stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg

from assemblage_assets.constants import ImageStatus
from assemblage_assets.core.batching import batched
from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.images import catalog, staging
from assemblage_assets.images.probe import ProbeResult, probe_file
from assemblage_assets.images.scan import ScanEntry, scan_shard
from assemblage_assets.images.sources import ShardRef
from resources.image_library import ImageLibraryResource
from resources.image_source import (
    EntryError,
    ImageSource,
    SourceConfigError,
    SourceEntry,
    SourceShard,
    TransientSourceError,
    with_retries,
)

_MIB = 1024 * 1024
_NEEDS_BYTES = (ImageStatus.PENDING.value, ImageStatus.PROCESSED.value)


@dataclass(frozen=True)
class StagingLimits:
    root: Path
    budget_bytes: int  # all staged files together (SOURCE_STAGING_BUDGET_MB)
    max_file_bytes: int  # one entry (SOURCE_MAX_FILE_MB)
    concurrency: int = 4  # parallel downloads (SOURCE_DOWNLOAD_CONCURRENCY)
    retry_delay: float = 0.5  # first backoff of a transient download failure


def _is_unchanged(entry: SourceEntry, known: dict | None, root: Path) -> bool:
    """Same size and marker, and, while a stage still needs the bytes, a staged copy to read
    (a wiped staging folder, or another machine's, means downloading it again)."""
    if known is None or known["file_size"] != entry.size or known["source_marker"] != entry.marker:
        return False
    return known["status"] not in _NEEDS_BYTES or staging.staged_path(root, entry.uri).exists()


def _fetch(source: ImageSource, entry: SourceEntry, limits: StagingLimits, max_pixels: int) -> tuple[ProbeResult, str | None]:
    """Download and probe one entry; (result, marker to record: None means retry next scan)."""
    dest = staging.staged_path(limits.root, entry.uri)
    try:
        with_retries(lambda: source.download(entry, dest), base_delay=limits.retry_delay)
    except EntryError as exc:
        retry = exc.kind in ("source-changed", "source-missing", "forbidden")  # may heal: try again next scan
        return ProbeResult.failed(exc.kind, str(exc), bytes=entry.size), None if retry else entry.marker
    except TransientSourceError as exc:
        return ProbeResult.failed(exc.kind, f"gave up after retries: {exc}", bytes=entry.size), None
    result = probe_file(str(dest), entry.size, max_pixels)
    if result.status != "pending":
        dest.unlink(missing_ok=True)
    return result, entry.marker


def _precheck(entry: SourceEntry, limits: StagingLimits, max_pixels: int) -> ProbeResult | None:
    """What is known from the listing alone: a non-image name, an empty or oversized entry."""
    if entry.size > limits.max_file_bytes:
        return ProbeResult.failed(
            "too-large", f"{entry.size:,} bytes exceeds SOURCE_MAX_FILE_MB={limits.max_file_bytes // _MIB:,}", bytes=entry.size
        )
    # probe_file decides on the extension, then on an empty file, before it opens the path:
    # asking about a path that never exists settles those two without a download.
    result = probe_file(str(limits.root / f"unlisted{entry.extension}"), entry.size, max_pixels)
    if result.status == "rejected" or result.error_kind == "empty":
        return result
    return None


def scan_remote_shard(
    conn: psycopg.Connection,
    source: ImageSource,
    shard_key: str,
    shard: SourceShard,
    *,
    limits: StagingLimits,
    max_pixels: int,
    batch_size: int = 256,
    progress: Progress | None = None,
    owner: str | None = None,
    only: Sequence[SourceEntry] | None = None,
) -> StageReport:
    """Stream the shard's entries (or just ``only``); see the module docstring. Counts: seen,
    unchanged, new, changed, pending, failed, rejected, deferred, downloaded (+ bytes)."""
    report = StageReport()
    started = time.perf_counter()
    staged_bytes = staging.used_bytes(limits.root)
    entries: Iterator[SourceEntry] = iter(only) if only is not None else source.entries(shard)
    with ThreadPoolExecutor(max_workers=max(1, limits.concurrency), thread_name_prefix="download") as pool:
        for batch in batched(entries, batch_size):
            known = catalog.known_entries(conn, [e.uri for e in batch])
            decided: list[tuple[SourceEntry, ProbeResult, str | None]] = []
            downloads: list[SourceEntry] = []
            for entry in batch:
                report.counts["seen"] += 1
                if _is_unchanged(entry, known.get(entry.uri), limits.root):
                    report.counts["unchanged"] += 1
                    continue
                report.counts["changed" if entry.uri in known else "new"] += 1
                early = _precheck(entry, limits, max_pixels)
                if early is not None:
                    decided.append((entry, early, entry.marker))
                elif staged_bytes + entry.size > limits.budget_bytes:
                    report.counts["deferred"] += 1  # unrecorded: the next scan sees it as new
                else:
                    staged_bytes += entry.size
                    downloads.append(entry)
            for entry, (result, marker) in zip(
                downloads, pool.map(lambda e: _fetch(source, e, limits, max_pixels), downloads), strict=True
            ):
                decided.append((entry, result, marker))
                if result.status == "pending":
                    report.counts["downloaded"] += 1
                else:
                    staged_bytes -= entry.size
            _record(conn, shard_key, decided, owner, report)
            if progress and report.counts["seen"] % (batch_size * 20) < batch_size:
                progress(f"listed {report.counts['seen']:,} entries of shard {shard_key}")
    report.seconds = time.perf_counter() - started
    return report


def _record(
    conn: psycopg.Connection, shard_key: str, decided: Sequence[tuple[SourceEntry, ProbeResult, str | None]],
    owner: str | None, report: StageReport,
) -> None:
    rows = [(ScanEntry(entry.uri, size=entry.size), result, marker) for entry, result, marker in decided]
    if rows:
        catalog.record_scanned_entries(conn, shard_key, rows, owner)
    for entry, result, _ in decided:
        report.counts[result.status] += 1
        report.bytes += result.bytes
        if result.status != "pending":
            report.add_failure(entry.uri, result.error_kind, result.error_message)


def check_source(source: ImageSource) -> None:
    """Preflight outside Dagster (CLI): raises ``SourceConfigError`` with the setting to fix."""
    try:
        source.preflight()
    except TransientSourceError as exc:
        raise SourceConfigError(f"{source.uri} unavailable: {exc}") from None


def limits_of(library: ImageLibraryResource) -> StagingLimits:
    return StagingLimits(
        root=library.staging,
        budget_bytes=library.staging_budget_mb * _MIB,
        max_file_bytes=library.source_max_file_mb * _MIB,
        concurrency=library.download_concurrency,
    )


def scan_ref(
    conn: psycopg.Connection,
    ref: ShardRef,
    library: ImageLibraryResource,
    *,
    only: Sequence[str] = (),
    progress: Progress | None = None,
) -> StageReport:
    """``raw_files`` of any shard: the local walk (``scan.scan_shard``, unchanged) or the remote
    listing; ``only``: just these entry URIs of a remote shard (``assemblage process``)."""
    owner = library.default_owner or None
    if ref.local is not None:
        return scan_shard(conn, ref.local, max_pixels=library.max_image_pixels, progress=progress, owner=owner)
    assert ref.remote is not None
    entries = [ref.source.entry(uri) for uri in only] if only else None
    return scan_remote_shard(
        conn, ref.source, ref.key, ref.remote, limits=limits_of(library), max_pixels=library.max_image_pixels,
        progress=progress, owner=owner, only=entries,
    )

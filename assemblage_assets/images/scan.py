"""``raw_files`` of a shard: a streaming directory walk, then probe and record new or changed files.

The walk yields one entry per file without ever listing the whole tree: only the stack of
directories still to visit and the identities of visited directories (for symlink-loop
detection) are held. ``scan_shard`` pulls it in batches, so a crash loses at most one batch.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from assemblage_assets.core.batching import batched
from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.images import catalog, rescan
from assemblage_assets.images.probe import ProbeResult, probe_file
from assemblage_assets.images.shards import Shard


@dataclass(frozen=True)
class ScanEntry:
    path: str  # as the OS gave it (may hold surrogate escapes for undecodable bytes)
    size: int | None = None
    mtime_ns: int | None = None
    error_kind: str | None = None  # set when the entry cannot be a candidate image at all
    error_message: str | None = None
    owner: str | None = None  # who this file belongs to, when its source knows (wins over the shard's)

    @property
    def db_path(self) -> str:
        """Text form for Postgres: undecodable bytes shown as ``\\xNN`` escapes."""
        return os.fsencode(self.path).decode("utf-8", "backslashreplace")


def _stat_error(path: str, exc: OSError) -> ScanEntry:
    if exc.errno == errno.ELOOP:
        return ScanEntry(path, error_kind="symlink-loop", error_message="symlink loop: too many levels of symbolic links")
    if exc.errno == errno.ENOENT:
        return ScanEntry(path, error_kind="broken-symlink", error_message="symlink target does not exist")
    if exc.errno == errno.EACCES:
        return ScanEntry(path, error_kind="unreadable", error_message=f"permission denied: {exc.strerror}")
    return ScanEntry(path, error_kind="unreadable", error_message=f"cannot stat: {exc.strerror or exc}")


def iter_shard_files(shard: Shard) -> Iterator[ScanEntry]:
    """Yield every file of the shard (recursively unless it is the top-level shard).

    Directory symlinks are followed once; a link back into a directory already visited is
    reported as a symlink loop instead of being walked forever.
    """
    for item in iter_shard_stats(shard):
        yield ScanEntry(*item) if type(item) is tuple else item


def iter_shard_stats(shard: Shard) -> Iterator[ScanEntry | tuple[str, int, int]]:
    """``iter_shard_files`` with each regular file as a bare (path, size, mtime_ns) tuple: the
    rescan's fast path (an object per file costs as much as the stat)."""
    root = str(shard.path)
    try:
        visited = {_dir_identity(root)}
    except OSError as exc:
        yield _stat_error(root, exc)
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError as exc:
            yield ScanEntry(directory, error_kind="unreadable", error_message=f"cannot list directory: {exc.strerror or exc}")
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    yield _stat_error(entry.path, exc)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not shard.recursive:
                        continue  # subfolders of the top level are shards of their own
                    identity = (st.st_dev, st.st_ino)
                    if identity in visited:
                        yield ScanEntry(entry.path, error_kind="symlink-loop", error_message="directory symlink points back into the tree already scanned")
                        continue
                    visited.add(identity)
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    yield entry.path, st.st_size, st.st_mtime_ns
                else:
                    yield ScanEntry(entry.path, error_kind="not-a-file", error_message="not a regular file (device, socket or pipe)")


def _dir_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _probe(entry: ScanEntry, max_pixels: int) -> ProbeResult:
    if entry.error_kind:
        return ProbeResult.failed(entry.error_kind, entry.error_message or "")
    return probe_file(entry.path, entry.size or 0, max_pixels)


def scan_shard(
    conn: psycopg.Connection,
    shard: Shard,
    *,
    max_pixels: int,
    batch_size: int = 256,
    progress: Progress | None = None,
    owner: str | None = None,
) -> StageReport:
    """Stream the shard's files; probe new or changed ones; upsert them batch by batch. New
    images get ``owner`` (who their paid calls are billed to).

    Probing runs in this thread on purpose: Pillow's and the EXIF reader's warning handling is
    process-global, and shards already run in parallel as separate Dagster runs.
    """
    report = StageReport()
    started = time.perf_counter()
    # The walk goes to the database in one COPY; only new, changed and deleted paths come back.
    comparison = rescan.Comparison()
    differing = rescan.compare_shard(
        conn, shard.key, lambda: iter_shard_stats(shard), comparison, lambda gone: catalog.record_deleted(conn, gone), progress
    )
    for batch in batched(differing, batch_size):
        todo = [ScanEntry(**fields) for fields in batch]
        results = [_probe(e, max_pixels) for e in todo]
        catalog.record_scanned(conn, shard.key, zip(todo, results, strict=True), owner)
        for entry, result in zip(todo, results, strict=True):
            report.counts[result.status] += 1
            report.bytes += result.bytes
            if result.status != "pending":
                report.add_failure(entry.db_path, result.error_kind, result.error_message)
        probed = comparison.new + comparison.changed
        if progress and probed % (batch_size * 20) < batch_size:
            progress(f"probed {probed:,} new or changed of {comparison.seen:,} files of shard {shard.key}")
    rescan.record_scan(conn, shard.key, comparison)
    report.counts.update(seen=comparison.seen, new=comparison.new, changed=comparison.changed,
                         unchanged=comparison.unchanged, deleted=comparison.deleted)
    report.seconds = time.perf_counter() - started
    return report

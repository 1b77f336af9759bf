"""What a scan changed, decided in the database in one pass: new, changed and deleted files.

A walk identical to the shard's last complete scan (the same digest of every path, size and
mtime in walk order, and as many ``processing_log`` rows; ``shard_scans``) has nothing to
compare: a rescan of an unchanged tree costs the walk and a hash. Otherwise the walk streams
every entry of the shard into a temporary table with one COPY (flat memory in the process, no
round trip per batch), then one join against ``processing_log`` returns only the entries that
differ from their rows (new, or another size or mtime) and the shard's rows no file was seen for
(deleted). The digest is only ever a shortcut: any doubt means the full comparison.

``compare_shard`` is what ``scan_shard`` consumes; ``shard_work`` counts the same thing
without probing or writing anything, for the CLI to find the shards a run has work in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row

from assemblage_assets.constants import ImageStatus
from assemblage_assets.core.reports import Progress

if TYPE_CHECKING:  # annotations only: scan.py imports this module
    from assemblage_assets.images.scan import ScanEntry

DELETED = "deleted"  # processing_log.error_kind of a path whose file is gone
COPY_CHUNK = 4096  # entries per COPY write
FETCH_PAGE = 256  # changed entries per fetch (a probe batch)
PROGRESS_EVERY = 100_000  # walked entries between progress lines

_TEMP_TABLE = """CREATE TEMP TABLE IF NOT EXISTS scan_seen (
    path text, size bigint, mtime_ns bigint, os_path bytea,
    error_kind text, error_message text, owner text)"""
# The shard's rows joined to what the walk saw; a row comes back when it is new, changed or gone.
# Rows already recorded as deleted stay quiet until a file appears at their path again.
_DIFF = """SELECT s.path, s.size, s.mtime_ns, s.os_path, s.error_kind, s.error_message, s.owner,
                  p.local_path IS NOT NULL AS known, p.local_path AS gone
           FROM scan_seen s
           FULL JOIN (SELECT local_path, file_size, file_mtime_ns, error_kind FROM processing_log
                      WHERE shard = %(shard)s) p ON p.local_path = s.path
           WHERE CASE WHEN s.path IS NULL THEN p.error_kind IS DISTINCT FROM %(deleted)s
                      ELSE p.local_path IS NULL OR p.file_size IS DISTINCT FROM s.size
                           OR p.file_mtime_ns IS DISTINCT FROM s.mtime_ns END"""


@dataclass
class Comparison:
    """Counts of a comparison, complete once ``compare_shard`` is exhausted."""

    seen: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    digest: bytes | None = None  # of the walk compared in full (None: identical to the last scan)

    @property
    def unchanged(self) -> int:
        return self.seen - self.new - self.changed


def _text(value: str | None) -> str:
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _line(item: ScanEntry | tuple[str, int, int]) -> str:
    """One COPY line; the OS form of the path rides along only when it is not valid UTF-8."""
    if type(item) is tuple:  # a regular file from a local walk: the common case, kept cheap
        path, size, mtime_ns = item
        if path.isprintable() and "\\" not in path:  # no escapes needed, no surrogates
            return f"{path}\t{size}\t{mtime_ns}\t\\N\t\\N\t\\N\t\\N\n"
        entry: Any = _Regular(path, size, mtime_ns)
    else:
        entry = item
    path, os_path = entry.path, "\\N"
    try:
        path.encode()
    except UnicodeEncodeError:
        path, os_path = entry.db_path, "\\\\x" + os.fsencode(entry.path).hex()
    size = "\\N" if entry.size is None else entry.size
    mtime = "\\N" if entry.mtime_ns is None else entry.mtime_ns
    return (f"{_text(path)}\t{size}\t{mtime}\t{os_path}\t{_text(entry.error_kind)}\t"
            f"{_text(entry.error_message)}\t{_text(entry.owner)}\n")


@dataclass(frozen=True)
class _Regular:
    """The fields ``_line`` reads, for a bare (path, size, mtime) whose path needs escaping."""

    path: str
    size: int
    mtime_ns: int
    error_kind: None = None
    error_message: None = None
    owner: None = None

    @property
    def db_path(self) -> str:
        return os.fsencode(self.path).decode("utf-8", "backslashreplace")


Walk = Callable[[], Iterable["ScanEntry | tuple[str, int, int]"]]  # a fresh walk of the shard each call


def _chunks(entries: Iterable[ScanEntry | tuple[str, int, int]], progress: Progress | None) -> Iterator[tuple[int, bytes]]:
    """(entries, COPY text) per chunk of the walk."""
    iterator, seen = iter(entries), 0
    while chunk := list(islice(iterator, COPY_CHUNK)):
        seen += len(chunk)
        if progress and seen % PROGRESS_EVERY < COPY_CHUNK:
            progress(f"walked {seen:,} files")
        yield len(chunk), "".join(map(_line, chunk)).encode()


def digest_walk(entries: Iterable[ScanEntry | tuple[str, int, int]], progress: Progress | None = None) -> tuple[bytes, int]:
    """Digest of a walk (paths, sizes, mtimes, errors, in walk order) and its length."""
    digest, seen = hashlib.blake2b(digest_size=16), 0
    for count, text in _chunks(entries, progress):
        digest.update(text)
        seen += count
    return digest.digest(), seen


def load_seen(
    conn: psycopg.Connection, entries: Iterable[ScanEntry | tuple[str, int, int]], progress: Progress | None = None
) -> tuple[bytes, int]:
    """Stream the walk (entries, or bare (path, size, mtime_ns) of regular files) into this
    session's ``scan_seen`` table; returns its digest and length."""
    conn.execute(_TEMP_TABLE)
    conn.execute("TRUNCATE scan_seen")
    digest, seen = hashlib.blake2b(digest_size=16), 0
    with conn.cursor().copy("COPY scan_seen FROM STDIN") as copy:
        for count, text in _chunks(entries, progress):
            copy.write(text)
            digest.update(text)
            seen += count
    return digest.digest(), seen


def _unchanged_since_last_scan(conn: psycopg.Connection, shard: str, digest: bytes, files: int) -> bool:
    row = conn.cursor(row_factory=tuple_row).execute(
        """SELECT s.digest = %s AND s.files = %s
                  AND s.log_rows = (SELECT count(*) FROM processing_log WHERE shard = %s)
           FROM shard_scans s WHERE s.shard = %s""",
        (digest, files, shard, shard),
    ).fetchone()
    return bool(row and row[0])


def forget_scan(conn: psycopg.Connection, shard: str) -> None:
    """The next scan of the shard compares every file in the database (no digest shortcut)."""
    conn.execute("DELETE FROM shard_scans WHERE shard = %s", (shard,))


def record_scan(conn: psycopg.Connection, shard: str, result: Comparison) -> None:
    """The shard's scan is complete and recorded: remember its walk for the next rescan."""
    if result.digest is None:
        return
    conn.execute(
        """INSERT INTO shard_scans (shard, digest, files, log_rows, scanned_at)
           VALUES (%(shard)s, %(digest)s, %(files)s, (SELECT count(*) FROM processing_log WHERE shard = %(shard)s), now())
           ON CONFLICT (shard) DO UPDATE SET digest = EXCLUDED.digest, files = EXCLUDED.files,
                  log_rows = EXCLUDED.log_rows, scanned_at = now()""",
        {"shard": shard, "digest": result.digest, "files": result.seen},
    )


def compare_shard(
    conn: psycopg.Connection,
    shard: str,
    walk: Walk,
    result: Comparison,
    on_deleted: Callable[[list[str]], None],
    progress: Progress | None = None,
) -> Iterator[dict[str, Any]]:
    """The new or changed entries of the walk for ``shard``, as ``ScanEntry`` keyword
    arguments, after the whole walk; fills ``result``. Paths whose file is gone go to
    ``on_deleted`` a page at a time. Statements may run on ``conn`` between two yields (the
    probe's writes): the differences wait in a held server-side cursor, not in this process.

    A walk identical to the last complete scan's (``shard_scans``) yields nothing without
    sending the walk; otherwise the shard is walked again into the database. The caller
    calls ``record_scan`` once every difference is recorded."""
    digest, seen = digest_walk(walk(), progress)
    if _unchanged_since_last_scan(conn, shard, digest, seen):
        result.seen = seen
        return
    result.digest, result.seen = load_seen(conn, walk(), progress)
    with conn.cursor(name="scan_diff", withhold=True, row_factory=tuple_row) as cur:
        cur.execute(_DIFF, {"shard": shard, "deleted": DELETED})
        while rows := cur.fetchmany(FETCH_PAGE):
            gone_page = [gone for path, *_, gone in rows if path is None]
            if gone_page:
                result.deleted += len(gone_page)
                on_deleted(gone_page)
            for path, size, mtime_ns, os_path, error_kind, error_message, owner, known, _gone in rows:
                if path is None:
                    continue
                result.changed += known
                result.new += not known
                yield {
                    "path": os.fsdecode(bytes(os_path)) if os_path is not None else path,
                    "size": size, "mtime_ns": mtime_ns, "error_kind": error_kind,
                    "error_message": error_message, "owner": owner,
                }


@dataclass(frozen=True)
class ShardWork:
    """What an ingest run of a shard would find to do."""

    seen: int
    new: int
    changed: int
    deleted: int
    pending: int  # paths waiting for derivatives
    processed: int  # paths waiting for r2_objects

    @property
    def idle(self) -> bool:
        return not (self.new or self.changed or self.deleted or self.pending or self.processed)

    def describe(self) -> str:
        parts = [f"{n} {what}" for what, n in (("new", self.new), ("changed", self.changed), ("deleted", self.deleted),
                                               ("to derive", self.pending), ("to publish", self.processed)) if n]
        return ", ".join(parts) or f"{self.seen} files unchanged"


def shard_work(conn: psycopg.Connection, shard: str, walk: Walk) -> ShardWork:
    """Count what the shard's stages would do, reading only (no probe, no write to the catalogue)."""
    new = changed = deleted = 0
    digest, seen = digest_walk(walk())
    with conn.cursor(row_factory=tuple_row) as cur:
        if not _unchanged_since_last_scan(conn, shard, digest, seen):
            _, seen = load_seen(conn, walk())
            for path, *_, known, _gone in cur.execute(_DIFF, {"shard": shard, "deleted": DELETED}):
                if path is None:
                    deleted += 1
                elif known:
                    changed += 1
                else:
                    new += 1
        pending, processed = cur.execute(
            """SELECT count(*) FILTER (WHERE status = %s), count(*) FILTER (WHERE status = %s)
               FROM processing_log WHERE shard = %s AND status = ANY(%s)""",
            (ImageStatus.PENDING.value, ImageStatus.PROCESSED.value, shard,
             [ImageStatus.PENDING.value, ImageStatus.PROCESSED.value]),
        ).fetchone()
    return ShardWork(seen, new, changed, deleted, int(pending), int(processed))

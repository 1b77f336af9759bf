"""Per-shard stage functions behind the ``raw_files`` and ``derivatives`` assets.

Plain functions over a psycopg connection, testable without Dagster. Each commits in small
batches, so a crash loses at most one batch of work and a rerun picks up exactly what is missing.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from assemblage_assets import catalog
from assemblage_assets.derive import DerivativeSpec, DerivedImage, derive_image, preview_key, thumbnail_key
from assemblage_assets.probe import ProbeResult, probe_file
from assemblage_assets.scan import ScanEntry, iter_shard_files
from assemblage_assets.shards import Shard

Progress = Callable[[str], None]
MAX_REPORTED_FAILURES = 50


@dataclass
class StageReport:
    """What one stage did to one shard; becomes Dagster metadata and CLI output."""

    counts: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, message)

    def add_failure(self, path: str, kind: str | None, message: str | None) -> None:
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append((path, kind or "error", message or ""))

    def per_second(self, key: str) -> float:
        return round(self.counts[key] / self.seconds, 2) if self.seconds > 0 else 0.0


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


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
) -> StageReport:
    """Stream the shard's files; probe new or changed ones; upsert them batch by batch.

    Probing runs in this thread on purpose: Pillow's and the EXIF reader's warning handling is
    process-global, and shards already run in parallel as separate Dagster runs.
    """
    report = StageReport()
    started = time.perf_counter()
    for batch in _batched(iter_shard_files(shard), batch_size):
        known = catalog.known_files(conn, [e.db_path for e in batch])
        todo = []
        for entry in batch:
            report.counts["seen"] += 1
            if catalog.is_unchanged(entry, known.get(entry.db_path)):
                report.counts["unchanged"] += 1
            else:
                report.counts["changed" if entry.db_path in known else "new"] += 1
                todo.append(entry)
        results = [_probe(e, max_pixels) for e in todo]
        catalog.record_scanned(conn, shard.key, zip(todo, results, strict=True))
        for entry, result in zip(todo, results, strict=True):
            report.counts[result.status] += 1
            report.bytes += result.bytes
            if result.status != "pending":
                report.add_failure(entry.db_path, result.error_kind, result.error_message)
        if progress and report.counts["seen"] % (batch_size * 20) < batch_size:
            progress(f"scanned {report.counts['seen']:,} files of shard {shard.key}")
    report.seconds = time.perf_counter() - started
    return report


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    # spawn, not fork: Dagster's process has threads, and forking those can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _derive_all(
    jobs: Iterator[tuple[str, str]], cache_dir: Path, spec: DerivativeSpec, workers: int
) -> Iterator[DerivedImage]:
    """Derive images in a process pool with a bounded number of tasks in flight."""
    pool = _pool(workers)
    if pool is None:
        for image_id, path in jobs:
            yield derive_image(path, image_id, cache_dir, spec)
        return
    with pool:
        in_flight: set[Future[DerivedImage]] = set()
        for image_id, path in jobs:
            in_flight.add(pool.submit(derive_image, path, image_id, cache_dir, spec))
            if len(in_flight) >= workers * 4:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for future in in_flight:
            yield future.result()


def derive_shard(
    conn: psycopg.Connection,
    shard_key: str,
    *,
    cache_dir: Path,
    spec: DerivativeSpec,
    workers: int = 0,
    commit_every: int = 32,
    progress: Progress | None = None,
) -> StageReport:
    """Derive every pending image of the shard; already-derived content is only marked processed."""
    report = StageReport()
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    total = catalog.count_pending(conn, shard_key)
    reuse: list[str] = []
    paths: dict[str, str] = {}

    def jobs() -> Iterator[tuple[str, str]]:
        for row in catalog.pending_images(conn, shard_key):
            cached = row["already_derived"] and all(
                (cache_dir / key(row["image_id"])).exists() for key in (thumbnail_key, preview_key)
            )
            if cached:
                reuse.append(row["image_id"])
                continue
            paths[row["image_id"]] = row["local_path"]
            yield row["image_id"], row["local_path"]

    batch: list[DerivedImage] = []
    for result in _derive_all(jobs(), cache_dir, spec, workers):
        batch.append(result)
        if result.ok:
            report.counts["processed"] += 1
            report.bytes += _derivative_bytes(cache_dir, result.image_id)
        else:
            report.counts["failed"] += 1
            report.add_failure(paths.get(result.image_id, result.image_id), result.error_kind, result.error_message)
        paths.pop(result.image_id, None)
        if len(batch) >= commit_every:
            catalog.record_derived(conn, batch)
            batch = []
            if progress:
                done = report.counts["processed"] + report.counts["failed"]
                progress(f"derived {done:,}/{total:,} images of shard {shard_key}")
    if batch:
        catalog.record_derived(conn, batch)
    if reuse:
        catalog.mark_processed(conn, reuse)
    report.counts["reused"] = len(reuse)
    report.seconds = time.perf_counter() - started
    return report


def _derivative_bytes(cache_dir: Path, image_id: str) -> int:
    return sum((cache_dir / key(image_id)).stat().st_size for key in (thumbnail_key, preview_key))

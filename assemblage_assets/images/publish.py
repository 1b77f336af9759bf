"""Per-shard publishing behind ``r2_objects``: originals and derivatives into the object store.

Plain functions over a psycopg connection and an ``ObjectStore``, testable without Dagster.
Every image of the shard that is processed (or already published, to repair missing objects)
expects three objects; the store is asked once which of them exist (listing the shard's
prefixes), only the missing ones are uploaded, in parallel, and an image is marked
``uploaded`` only after all three are confirmed stored. A crash loses nothing: the next run
finds the objects that made it and uploads only the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from assemblage_assets.constants import DERIVED_STATUSES, ImageStatus, preview_key, thumbnail_key
from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.images import catalog, staging, verification
from resources.object_store import (
    DERIVATIVE_CACHE_CONTROL,
    ORIGINAL_CACHE_CONTROL,
    ObjectSpec,
    ObjectStore,
    ObjectStoreError,
    PermanentObjectError,
    StoreConfigError,
    TransientStoreError,
    content_type_for,
)

RATE_KEY = "objects_uploaded"
CopyFrom = Callable[[str], str | None]  # a processing_log path -> its s3:// URI when a server-side copy applies


@dataclass
class ImageObjects:
    """One image of the shard and the three objects it must have in the store."""

    image_id: str
    original_key: str  # relative, as in the catalogue
    paths: list[str]
    needs_status: bool  # some path is still 'processed'
    was_uploaded: bool
    urls: tuple[str | None, str | None, str | None]  # as recorded: original, thumbnail, preview
    objects: list[ObjectSpec] = field(default_factory=list)


def _copy_source(paths: list[str], markers: list[str | None], copy_from: CopyFrom | None) -> tuple[str | None, str | None]:
    """The first path a server-side copy can read, with its change marker (a bucket's ETag)."""
    for path, marker in zip(paths, markers, strict=True):
        source = copy_from(path) if copy_from else None
        if source:
            return source, marker
    return None, None


def shard_images(
    conn: psycopg.Connection, shard: str, store: ObjectStore, cache_dir: Path, *, only_processed: bool,
    staging_dir: Path | None = None, copy_from: CopyFrom | None = None,
) -> list[ImageObjects]:
    """Every image of the shard that should be in the store, with its expected objects.
    A remote path's bytes are its staged copy (``staging_dir``); an original that ``copy_from``
    maps to a bucket object on the store's endpoint is stored by a server-side copy.

    Without an existence check (``SKIP_R2_HEAD``) only images still to publish are returned;
    otherwise published ones too, so objects deleted from the bucket are put back.
    """
    rows = conn.execute(
        """SELECT i.id::text AS image_id, i.original_key, i.content_hash, i.bytes,
                  i.thumbnail_key, i.preview_key, i.original_url, i.thumbnail_url, i.preview_url,
                  i.uploaded_at IS NOT NULL AS was_uploaded,
                  array_agg(p.local_path ORDER BY p.local_path) AS paths,
                  array_agg(p.source_marker ORDER BY p.local_path) AS markers,
                  bool_or(p.status = %(processed)s) AS needs_status
           FROM processing_log p JOIN images i ON i.id = p.image_id
           WHERE p.shard = %(shard)s AND p.status = ANY(%(derived)s)
           GROUP BY i.id
           HAVING bool_or(p.status = %(processed)s) OR NOT %(only_processed)s
           ORDER BY i.id""",
        {"shard": shard, "processed": ImageStatus.PROCESSED.value, "derived": list(DERIVED_STATUSES),
         "only_processed": only_processed},
    ).fetchall()
    images = []
    for row in rows:
        image_id = row["image_id"]
        copy_source, copy_etag = _copy_source(row["paths"], row["markers"], copy_from)
        item = ImageObjects(
            image_id,
            row["original_key"],
            row["paths"],
            row["needs_status"],
            row["was_uploaded"],
            (row["original_url"], row["thumbnail_url"], row["preview_url"]),
        )
        item.objects.append(ObjectSpec(
            key=store.key(row["original_key"]),
            visibility="private",
            sources=tuple(staging.local_file(p, staging_dir) for p in row["paths"]),
            copy_source=copy_source,
            copy_source_etag=copy_etag,
            content_type=content_type_for(row["original_key"]),
            cache_control=ORIGINAL_CACHE_CONTROL,
            sha256=row["content_hash"],
            size=row["bytes"],
        ))
        for relative in (row["thumbnail_key"] or thumbnail_key(image_id), row["preview_key"] or preview_key(image_id)):
            source = cache_dir / relative
            item.objects.append(ObjectSpec(
                key=store.key(relative),
                visibility="public",
                sources=(source,),
                content_type=content_type_for(relative),
                cache_control=DERIVATIVE_CACHE_CONTROL,
                size=_size(source),
            ))
        images.append(item)
    return images


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def directory_population(conn: psycopg.Connection, images: Sequence[ImageObjects], store: ObjectStore) -> dict[str, int]:
    """Objects other shards already published under each key directory of this shard.

    Plans the listing: a shard of 1,000 images in a bucket of millions lists narrow
    ``thumbnail/ab…`` prefixes (or HEADs) instead of paging through every thumbnail. The
    per-month counts use ``images_uploaded_original_key_idx``.
    """
    ours = [i for i in images if i.was_uploaded]
    total = conn.execute("SELECT count(*) AS n FROM images WHERE uploaded_at IS NOT NULL").fetchone()["n"]
    population = dict.fromkeys((store.key("thumbnail/"), store.key("watermarked/")), int(total) - len(ours))
    for directory in sorted({_directory(i.original_key) for i in images}):
        pattern = directory.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        n = conn.execute(
            "SELECT count(*) AS n FROM images WHERE uploaded_at IS NOT NULL AND original_key LIKE %s",
            (pattern,),
        ).fetchone()["n"]
        population[store.key(directory)] = int(n) - sum(1 for i in ours if _directory(i.original_key) == directory)
    return population


def _directory(key: str) -> str:
    return key.rpartition("/")[0] + "/"


def record_published(conn: psycopg.Connection, confirmed: Sequence[ImageObjects], store: ObjectStore) -> int:
    """Record URLs and advance the processed paths of each confirmed image; returns how many
    images changed (newly uploaded, or now in another store)."""
    changed = []
    for item in confirmed:
        urls = tuple(store.url(o.visibility, o.key) for o in item.objects)
        if item.needs_status or urls != item.urls:
            changed.append((item.image_id, urls))
    catalog.record_published(conn, changed)
    return len(changed)


@dataclass
class _Pending:
    item: ImageObjects
    remaining: int
    error: ObjectStoreError | None = None


def _stored_sizes(conn: psycopg.Connection, images: Sequence[ImageObjects], store: ObjectStore) -> dict[str, int]:
    """Size of each expected object the store already holds (nothing asked with ``SKIP_R2_HEAD``)."""
    present: dict[str, int] = {}
    if store.existence_check != "none":
        population = directory_population(conn, images, store)
        for visibility in ("private", "public"):
            keys = [o.key for i in images for o in i.objects if o.visibility == visibility]
            present.update(store.existing(visibility, keys, population))
    return present


@dataclass
class _Decided:
    """Images whose outcome is known since the last commit; ``flush`` records them in the catalogue."""

    conn: psycopg.Connection
    store: ObjectStore
    report: StageReport
    confirmed: list[ImageObjects] = field(default_factory=list)
    failed: list[tuple[ImageObjects, str, str]] = field(default_factory=list)
    requeued: list[ImageObjects] = field(default_factory=list)

    def flush(self) -> None:
        report = self.report
        report.counts["images_published"] += record_published(self.conn, self.confirmed, self.store)
        report.counts["images_verified"] += sum(1 for i in self.confirmed if not i.needs_status)
        catalog.record_publish_failed(self.conn, [(item.image_id, kind, message) for item, kind, message in self.failed])
        catalog.requeue_for_derivation(self.conn, [item.image_id for item in self.requeued])
        for item, kind, message in self.failed:
            report.add_failure(item.paths[0], kind, message)
        for item in self.requeued:
            report.add_failure(item.paths[0], "derivative-missing", "requeued for derivation")
        report.counts["images_failed"] += len(self.failed)
        report.counts["images_requeued"] += len(self.requeued)
        self.confirmed.clear()
        self.failed.clear()
        self.requeued.clear()


def publish_shard(
    conn: psycopg.Connection,
    shard: str,
    *,
    store: ObjectStore,
    cache_dir: Path,
    commit_every: int = 64,
    progress: Progress | None = None,
    indexed_model: str | None = None,
    skip_settled: bool = False,
    staging_dir: Path | None = None,
    copy_from: CopyFrom | None = None,
) -> StageReport:
    """Publish every image of the shard; see the module docstring. Paths of images that already
    have a vector for ``indexed_model`` (the active model) go on to ``indexed``: an image embedded
    before it was published must not stay ``uploaded``.

    With ``skip_settled`` a shard with nothing to publish whose objects were all verified in this
    store since its last upload (``images.verification``) is not checked again (count
    ``settled``); a complete check is recorded for the next run either way.

    Counts: ``images``, ``images_published`` (newly uploaded or moved to this store),
    ``images_failed``, ``images_requeued``, ``images_deferred`` (transient errors outlasted the
    retries: left as they were for the next attempt), ``objects_uploaded``, ``objects_skipped``.
    Raises ``StoreConfigError`` at the first sign the store configuration cannot work.
    """
    report = StageReport()
    started = time.perf_counter()
    if skip_settled and store.existence_check != "none":
        state = verification.settlement(conn, shard, store)
        if state.settled:
            report.counts.update(images=state.images, settled=1)
            report.seconds = time.perf_counter() - started
            return report
    images = shard_images(conn, shard, store, cache_dir, only_processed=store.existence_check == "none",
                          staging_dir=staging_dir, copy_from=copy_from)
    report.counts["images"] = len(images)
    if not images:
        if indexed_model:
            report.counts["indexed_paths"] += catalog.mark_indexed(conn, shard, indexed_model)
        report.seconds = time.perf_counter() - started
        return report

    present = _stored_sizes(conn, images, store)
    decided = _Decided(conn, store, report)
    uploads: list[tuple[_Pending, ObjectSpec]] = []
    for item in images:
        missing = [o for o in item.objects if not _stored(o, present)]
        report.counts["objects_skipped"] += len(item.objects) - len(missing)
        if any(o.visibility == "public" and o.size is None for o in missing):
            decided.requeued.append(item)
        elif not missing:
            decided.confirmed.append(item)
        else:
            pending = _Pending(item, len(missing))
            uploads.extend((pending, spec) for spec in missing)

    decided.flush()  # images already complete are recorded before any upload
    total = len(uploads)
    try:
        with closing(_upload_all(store, uploads)) as outcomes:
            for pending, outcome in outcomes:
                if isinstance(outcome, StoreConfigError):
                    raise outcome
                _account(report, pending, outcome)
                if pending.remaining == 0:
                    if pending.error is None:
                        decided.confirmed.append(pending.item)
                    elif isinstance(pending.error, TransientStoreError):
                        report.counts["images_deferred"] += 1
                        report.add_failure(pending.item.paths[0], pending.error.kind, f"will retry: {pending.error}")
                    else:
                        decided.failed.append((pending.item, pending.error.kind, str(pending.error)))
                if len(decided.confirmed) + len(decided.failed) >= commit_every:
                    decided.flush()
                    if progress:
                        done = report.counts[RATE_KEY] + report.counts["objects_failed"]
                        progress(f"uploaded {done:,}/{total:,} objects of shard {shard}")
    finally:
        decided.flush()  # whatever was confirmed before an error is kept
        report.seconds = time.perf_counter() - started
    if indexed_model:
        report.counts["indexed_paths"] += catalog.mark_indexed(conn, shard, indexed_model)
    if store.existence_check != "none" and not report.counts["images_deferred"]:
        verification.record_verified(conn, shard, store, len(images))
    return report


def _account(report: StageReport, pending: _Pending, outcome: int | ObjectStoreError) -> None:
    pending.remaining -= 1
    if isinstance(outcome, ObjectStoreError):
        # A permanent error outranks a transient one: retrying will not make it go away.
        if pending.error is None or isinstance(outcome, PermanentObjectError):
            pending.error = outcome
        report.counts["objects_failed"] += 1
    else:
        report.counts[RATE_KEY] += 1
        report.bytes += outcome


def _stored(spec: ObjectSpec, present: dict[str, int]) -> bool:
    size = present.get(spec.key)
    return size is not None and (spec.size is None or size == spec.size)


def _upload_all(
    store: ObjectStore, uploads: Sequence[tuple[_Pending, ObjectSpec]]
) -> Iterator[tuple[_Pending, int | ObjectStoreError]]:
    """Upload in ``store.concurrency`` threads with a bounded queue; yields (image, size or error)
    in completion order. On a configuration error the queued uploads are cancelled."""

    def put(spec: ObjectSpec) -> int | ObjectStoreError:
        try:
            return store.put(spec)
        except ObjectStoreError as exc:
            return exc

    workers = max(1, store.concurrency)
    todo = iter(uploads)
    in_flight: dict[Future[Any], _Pending] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
        try:
            while True:
                for pending, spec in todo:
                    in_flight[pool.submit(put, spec)] = pending
                    if len(in_flight) >= workers * 2:
                        break
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield in_flight.pop(future), future.result()
        finally:
            for future in in_flight:
                future.cancel()


"""Per-shard stage behind the ``embeddings`` asset: every processed image of the shard gets a
vector from the configured provider, stored in pgvector.

Plain functions over a psycopg connection and an ``EmbeddingResource``, testable without
Dagster. What it guarantees:

- Idempotent: candidates are the shard's images (status ``processed``, ``uploaded`` or
  ``indexed``) without a vector for the active model, not errored, and not waiting for a retry.
  A rerun finds only what is missing; vectors are upserted.
- Never pays twice: a paid result is written the moment it comes back, before anything else
  can fail (its cost row committed first, then vector, caption and queue in one transaction);
  each image is claimed with an advisory lock and re-checked, so two runs never buy the same
  (image, model).
- Faults are per image: decode errors, 4xx, 5xx, timeouts, malformed or wrong-dimension output
  go to the retry queue (``embed_queue``) and the shard carries on. Only configuration errors
  (credentials, model cannot load, ``EXPECTED_VECTOR_DIM`` mismatch) fail the run, and the
  dimension check happens before any write.
- Rate limits: paid calls take a slot from the shared limiter (``rate_limit``) and wait; a 429
  pauses the provider for its ``Retry-After``; when no slot comes within the wait budget the
  rest of the shard is rescheduled about 30 s later. Nothing is dropped or failed for it.

Statuses: ``uploaded`` paths become ``indexed`` once their image has a vector for the active
model. ``processed`` paths (not yet published) keep their status so ``r2_objects`` still
publishes them; they are promoted by the next ``embeddings`` run of the shard after that.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.constants import preview_key
from assemblage_assets.core.reports import StageReport
from assemblage_assets.embeddings import retry_queue, tags, vectors
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.embeddings.usage_log import UsageRow, log_usage
from resources.embedding import EmbeddingResource
from resources.embedding.types import EmbeddingError, EmbedItem, EmbedOutcome, ProviderConfigError, RateLimitedError

Progress = Callable[[str], None]
ELIGIBLE_STATUSES = ("processed", "uploaded", "indexed")
DEFAULT_MAX_WAIT_SECONDS = 90.0  # per call: longer means the limit is oversubscribed; reschedule
MAX_429_PER_IMAGE = 5
_LOCK_NAMESPACE = 7_312_024  # first key of the two-int advisory locks claiming (image, model)


@dataclass
class EmbedReport(StageReport):
    model: str = ""
    provider: str = ""
    dim: int = 0
    cost_usd: float = 0.0
    paid_calls: int = 0
    rate_limit_waited: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)


_VOCABULARY_VECTORS: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


def vocabulary_vectors(provider: EmbeddingResource, vocab: Sequence[str]) -> np.ndarray:
    """Text vectors of the zero-shot prompts, once per process and model (the CLI runs many
    shards in one process)."""
    key = (provider.model_id, tuple(vocab))
    if key not in _VOCABULARY_VECTORS:
        _VOCABULARY_VECTORS[key] = provider.embed_texts([tags.PROMPT.format(t) for t in vocab])[0]
    return _VOCABULARY_VECTORS[key]


@dataclass(frozen=True)
class _Deferred:
    item: EmbedItem
    reason: str


def promote_indexed(conn: psycopg.Connection, shard: str, model: str) -> int:
    """``uploaded`` paths of the shard whose image has a vector for ``model`` become ``indexed``."""
    cur = conn.execute(
        """UPDATE processing_log p SET status = 'indexed', updated_at = now()
           WHERE p.shard = %s AND p.status = 'uploaded'
             AND EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %s)""",
        (shard, model),
    )
    return cur.rowcount


_CANDIDATES = """
    SELECT DISTINCT ON (p.image_id) p.image_id::text AS image_id, p.local_path, i.preview_key,
           i.thumbnail_key, i.preview_url, i.caption, i.caption_model
    FROM processing_log p JOIN images i ON i.id = p.image_id
    WHERE p.shard = %(shard)s AND p.status = ANY(%(statuses)s) AND p.image_id > %(after)s::uuid
      AND NOT EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %(model)s)
      AND NOT EXISTS (SELECT 1 FROM embedding_queue q WHERE q.image_id = p.image_id AND q.model = %(model)s
                      AND (q.status = 'errored' OR q.next_attempt_at > now()))
    ORDER BY p.image_id, p.local_path
    LIMIT %(page)s"""


def count_candidates(conn: psycopg.Connection, shard: str | None, model: str) -> int:
    """Images (of one shard, or all) that an ``embeddings`` run would embed now."""
    row = conn.cursor(row_factory=tuple_row).execute(
        """SELECT count(DISTINCT p.image_id) FROM processing_log p
           WHERE (%(shard)s::text IS NULL OR p.shard = %(shard)s) AND p.status = ANY(%(statuses)s)
             AND NOT EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id AND e.model = %(model)s)
             AND NOT EXISTS (SELECT 1 FROM embedding_queue q WHERE q.image_id = p.image_id AND q.model = %(model)s
                             AND (q.status = 'errored' OR q.next_attempt_at > now()))""",
        {"shard": shard, "model": model, "statuses": list(ELIGIBLE_STATUSES)},
    ).fetchone()
    return int(row[0])


def candidates(
    conn: psycopg.Connection, shard: str, provider: EmbeddingResource, cache_dir: Path,
    *, limit: int = 0, page_size: int = 500,
) -> Iterator[EmbedItem]:
    """The shard's images to embed, paged by image id (no list of the shard in memory)."""
    model = provider.model_id
    caption_model = getattr(provider, "caption_model", None)
    after, seen = "00000000-0000-0000-0000-000000000000", 0
    while True:
        rows = conn.cursor(row_factory=dict_row).execute(
            _CANDIDATES,
            {"shard": shard, "model": model, "after": after, "page": page_size, "statuses": list(ELIGIBLE_STATUSES)},
        ).fetchall()
        known = tags.known_tags(conn, [r["image_id"] for r in rows]) if rows and caption_model else {}
        for row in rows:
            if limit and seen >= limit:
                return
            seen += 1
            preview = cache_dir / (row["preview_key"] or preview_key(row["image_id"]))
            thumbnail = cache_dir / row["thumbnail_key"] if row["thumbnail_key"] else None
            yield EmbedItem(
                image_id=row["image_id"],
                path=row["local_path"],
                preview_path=str(preview) if preview.is_file() else None,
                thumbnail_path=str(thumbnail) if thumbnail is not None and thumbnail.is_file() else None,
                preview_url=row["preview_url"],
                tags=known.get(row["image_id"], ()),
                caption=row["caption"] if caption_model and row["caption_model"] == caption_model else None,
            )
        if len(rows) < page_size:
            return
        after = rows[-1]["image_id"]


class _Recorder:
    """Writes outcomes: vectors, costs, captions, tags and the queue, each batch committed."""

    def __init__(self, conn: psycopg.Connection, shard: str, provider: EmbeddingResource, report: EmbedReport,
                 run_id: str | None, vocab: list[str], vocab_vectors: np.ndarray | None) -> None:
        self.conn, self.shard, self.provider, self.report, self.run_id = conn, shard, provider, report, run_id
        self.model = provider.model_id
        self.vocab, self.vocab_vectors = vocab, vocab_vectors
        self.paths: dict[str, str] = {}

    def record(self, outcomes: Sequence[EmbedOutcome]) -> None:
        ok = [o for o in outcomes if o.ok]
        failed = [o for o in outcomes if not o.ok]
        usage_rows = [
            UsageRow(self.provider.provider_name, self.model, o.image_id, o.usage, ok=o.ok, run_id=self.run_id)
            for o in outcomes if o.usage is not None
        ]
        captions = [(o.caption, o.caption_model, o.image_id) for o in outcomes if o.caption]
        tag_rows: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for o in outcomes:
            if o.tags and o.caption_model:
                tag_rows.setdefault(o.caption_model, {})[o.image_id] = o.tags
        if ok and self.vocab:
            vectors = np.stack([o.vector for o in ok])
            for o, found in zip(ok, tags.zero_shot(vectors, self.vocab, self.vocab_vectors), strict=True):
                tag_rows.setdefault(self.model, {})[o.image_id] = found
        # What was paid for is on record before anything else is attempted.
        log_usage(self.conn, usage_rows)
        with self.conn.transaction():
            if ok:
                vectors.write_vectors(
                    self.conn, self.model, self.provider.provider_name, [o.image_id for o in ok], np.stack([o.vector for o in ok])
                )
            if captions:
                self.conn.cursor().executemany(
                    "UPDATE images SET caption = %s, caption_model = %s, updated_at = now() WHERE id = %s", captions
                )
            retry_queue.record_success(self.conn, self.model, [o.image_id for o in ok])
        for tag_model, by_image in tag_rows.items():
            try:
                tags.write_tags(self.conn, tag_model, by_image)
            except psycopg.Error as exc:  # tags are a bonus: never lose vectors over them
                self.report.counts["tag_write_errors"] += 1
                self.report.add_failure(self.shard, "tags", f"{type(exc).__name__}: {exc}")
        if failed:
            counts = retry_queue.record_failures(
                self.conn, self.model, self.shard, [(o.image_id, o.error_kind or "error", o.error or "") for o in failed]
            )
            self.report.counts["errored"] += counts["errored"]
            self.report.counts["queued_for_retry"] += counts["retry"]
        for o in outcomes:
            if o.usage is not None:
                self.report.paid_calls += 1
                self.report.cost_usd += o.usage.cost_usd
        self.report.counts["embedded"] += len(ok)
        self.report.counts["failed"] += len(failed)
        self.report.counts["tags"] += sum(len(v) for m in tag_rows.values() for v in m.values())
        for o in failed:
            kind = o.error_kind or "error"
            self.report.errors_by_kind[kind] = self.report.errors_by_kind.get(kind, 0) + 1
            self.report.add_failure(self.paths.get(o.image_id, o.image_id), kind, o.error)

    def defer(self, deferred: Sequence[_Deferred], seconds: float) -> None:
        if deferred:
            retry_queue.record_deferred(
                self.conn, self.model, self.shard, [d.item.image_id for d in deferred], deferred[0].reason, seconds
            )
            self.report.counts["rescheduled"] += len(deferred)


def embed_shard(
    conn: psycopg.Connection,
    shard: str,
    provider: EmbeddingResource,
    *,
    dsn: str,
    cache_dir: Path,
    run_id: str | None = None,
    limit: int = 0,
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    reschedule_seconds: float = retry_queue.RESCHEDULE_SECONDS,
    progress: Progress | None = None,
) -> EmbedReport:
    """Embed the shard's missing images with ``provider``; see the module docstring."""
    started = time.perf_counter()
    provider.check_dimension()  # before any write
    model = provider.model_id
    report = EmbedReport(model=model, provider=provider.provider_name, dim=provider.dim)
    vectors.ensure_model(conn, model, provider.provider_name, provider.dim, provider.source)
    report.counts["indexed_paths"] += promote_indexed(conn, shard, model)
    total = count_candidates(conn, shard, model)
    if limit:
        total = min(total, limit)
    report.counts["candidates"] = total
    if total:
        vocab = tags.load_vocabulary(provider.tag_vocabulary) if provider.zero_shot_tags else []
        vocab_vectors = vocabulary_vectors(provider, vocab) if vocab else None
        recorder = _Recorder(conn, shard, provider, report, run_id, vocab, vocab_vectors)
        items = candidates(conn, shard, provider, cache_dir, limit=limit)
        if provider.paid:
            _embed_paid(items, provider, recorder, dsn=dsn, total=total, max_wait_seconds=max_wait_seconds,
                        reschedule_seconds=reschedule_seconds, progress=progress)
        else:
            _embed_local(items, provider, recorder, total=total, progress=progress)
        report.counts["indexed_paths"] += promote_indexed(conn, shard, model)
    report.seconds = time.perf_counter() - started
    return report


def _embed_local(
    items: Iterator[EmbedItem], provider: EmbeddingResource, recorder: _Recorder, *, total: int, progress: Progress | None
) -> None:
    def remember(stream: Iterator[EmbedItem]) -> Iterator[EmbedItem]:
        for item in stream:
            recorder.paths[item.image_id] = item.path
            yield item

    done = 0
    for outcomes in provider.embed_stream(remember(items)):  # type: ignore[attr-defined]
        recorder.record(outcomes)
        for o in outcomes:
            recorder.paths.pop(o.image_id, None)
        done += len(outcomes)
        if progress and (done % (provider.batch_size * 10) < len(outcomes) or done == total):
            progress(f"embedded {done:,}/{total:,} images of shard {recorder.shard} with {recorder.model}")


def _lock_key(image_id: str, model: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{model}\0{image_id}".encode()).digest()[:4], "big", signed=True)


def _embed_paid(
    items: Iterator[EmbedItem],
    provider: EmbeddingResource,
    recorder: _Recorder,
    *,
    dsn: str,
    total: int,
    max_wait_seconds: float,
    reschedule_seconds: float,
    progress: Progress | None,
) -> None:
    """Paid calls, ``CONCURRENCY`` at a time, each written the moment it returns."""
    model = recorder.model
    saturated = threading.Event()  # set once a call could not get a slot: reschedule the rest
    limiter = RateLimiter(dsn, provider.provider_name, provider.max_calls_per_min)
    claims = psycopg.connect(dsn, autocommit=True)  # holds the per-image advisory locks

    def call(item: EmbedItem) -> EmbedOutcome | _Deferred:
        throttled = 0
        while True:
            if saturated.is_set():
                return _Deferred(item, "rate limit: rescheduled with the rest of the shard")
            if not limiter.acquire(max_wait_seconds):
                saturated.set()
                return _Deferred(item, f"rate limit: no call slot for {provider.provider_name} within {max_wait_seconds:g}s")
            try:
                return provider.embed_image(item)
            except RateLimitedError as exc:
                throttled += 1
                limiter.pause(exc.retry_after if exc.retry_after is not None else reschedule_seconds, str(exc))
                if throttled >= MAX_429_PER_IMAGE:
                    saturated.set()
                    return _Deferred(item, f"rate limit: {throttled} answers 429 in a row")
            except ProviderConfigError:
                raise
            except EmbeddingError as exc:
                return EmbedOutcome(item.image_id, error_kind=exc.kind, error=str(exc), usage=exc.usage,
                                    caption=exc.caption, caption_model=exc.caption_model, tags=exc.tags)
            except Exception as exc:  # noqa: BLE001 - one image must not abort the shard
                return EmbedOutcome(item.image_id, error_kind="unexpected", error=f"{type(exc).__name__}: {exc}")

    def claim(item: EmbedItem) -> bool:
        key = _lock_key(item.image_id, model)
        got = claims.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, key)).fetchone()[0]
        if not got:
            return False
        done = claims.execute(
            "SELECT EXISTS (SELECT 1 FROM image_embeddings WHERE image_id = %s AND model = %s)", (item.image_id, model)
        ).fetchone()[0]
        if done:  # another run wrote it after our candidate query
            release(item)
            return False
        return True

    def release(item: EmbedItem) -> None:
        claims.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NAMESPACE, _lock_key(item.image_id, model)))

    deferred: list[_Deferred] = []
    done = 0
    workers = max(1, provider.concurrency)
    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"embed-{provider.provider_name}")
    in_flight: dict[Future[EmbedOutcome | _Deferred], EmbedItem] = {}
    try:
        def drain(block_until: int) -> None:
            nonlocal done
            while len(in_flight) > block_until:
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in finished:
                    item = in_flight.pop(future)
                    result = future.result()  # a ProviderConfigError propagates: the run fails
                    if isinstance(result, _Deferred):
                        deferred.append(result)
                    else:
                        recorder.record([result])  # written before anything else can fail
                    release(item)
                    recorder.paths.pop(item.image_id, None)
                    done += 1
                    if progress and (done % 25 == 0 or done == total):
                        progress(f"{provider.provider_name}: {done:,}/{total:,} images of shard {recorder.shard} "
                                 f"(${recorder.report.cost_usd:.4f} so far)")

        for item in items:
            if saturated.is_set():
                deferred.append(_Deferred(item, "rate limit: rescheduled with the rest of the shard"))
                continue
            if not claim(item):
                recorder.report.counts["claimed_elsewhere"] += 1
                continue
            recorder.paths[item.image_id] = item.path
            in_flight[pool.submit(call, item)] = item
            drain(block_until=workers * 2 - 1)
        drain(block_until=0)
    finally:
        saturated.set()  # a config error: the calls still queued return at once
        pool.shutdown(wait=True, cancel_futures=True)
        for future in list(in_flight):
            # Results that came back while an error unwound the loop are still written.
            if future.done() and not future.cancelled() and future.exception() is None:
                result = future.result()
                if isinstance(result, EmbedOutcome) and (result.ok or result.usage is not None):
                    recorder.record([result])
        recorder.report.rate_limit_waited = limiter.waited
        limiter.close()
        claims.close()
        recorder.defer(deferred, reschedule_seconds)

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
  go to the retry queue (``retry_queue``) and the shard carries on. Only configuration errors
  (credentials, model cannot load, ``EXPECTED_VECTOR_DIM`` mismatch) fail the run, and the
  dimension check happens before any write.
- Rate limits: every billable request takes a slot from the shared limiter (``rate_limit``):
  an image takes the slots its provider says it costs (``billable_requests``: OpenAI 2, a
  caption then an embedding, or 1 when the caption is already paid for) at once, and waits; a
  429 pauses the provider for its ``Retry-After``; when no slot comes within the wait budget the
  rest of the shard is rescheduled about 30 s later. Nothing is dropped or failed for it.

Candidates come from ``candidates.py``; what an outcome writes is ``outcomes.py``. Statuses:
``uploaded`` paths become ``indexed`` (``catalog.mark_indexed``) once their image has a vector for
the active model; ``processed`` paths (not yet published) keep their status so ``r2_objects``
still publishes them, and the next ``embeddings`` run of the shard promotes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import psycopg

from assemblage_assets.core import db
from assemblage_assets.core.reports import Progress
from assemblage_assets.embeddings import prompt_vectors, retry_queue, tags, text_calls, vectors
from assemblage_assets.embeddings.candidates import candidates, count_candidates
from assemblage_assets.embeddings.intents import PaidCallJournal
from assemblage_assets.embeddings.outcomes import Deferred, EmbedReport, OutcomeRecorder
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.images import catalog
from resources.embedding import EmbeddingResource
from resources.embedding.types import (
    EmbeddingError,
    EmbedItem,
    EmbedOutcome,
    ProviderConfigError,
    RateLimitedError,
    Usage,
)

DEFAULT_MAX_WAIT_SECONDS = 90.0  # per call: longer means the limit is oversubscribed; reschedule
MAX_429_PER_IMAGE = 5
_LOCK_NAMESPACE = 7_312_024  # first key of the two-int advisory locks claiming (image, model)


def vocabulary_vectors(conn: psycopg.Connection, provider: EmbeddingResource, vocab: Sequence[str],
                       run_id: str | None = None, *, dsn: str = "",
                       max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS) -> np.ndarray:
    """Text vectors of the zero-shot prompts: stored once per model and backend
    (``prompt_vectors``), so a step only embeds prompts no earlier step has; a paid provider's
    requests for them take slots of the shared rate limit and are logged like any other call
    (``text_calls``, with the stage's wait budget)."""

    def embed(prompts: list[str]) -> np.ndarray:
        return text_calls.embed_texts(conn, provider, prompts, purpose="text", run_id=run_id, dsn=dsn,
                                      max_wait=max_wait_seconds)

    prompts = [tags.PROMPT.format(t) for t in vocab]
    return prompt_vectors.vectors_for(conn, provider.model_id, provider.vector_backend or "", prompts, embed)


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
    rate_window_seconds: int = 60,
    progress: Progress | None = None,
) -> EmbedReport:
    """Embed the shard's missing images with ``provider``; see the module docstring."""
    started = time.perf_counter()
    provider.check_dimension()  # before any write
    model = provider.model_id
    report = EmbedReport(model=model, provider=provider.provider_name, dim=provider.dim,
                         backend=provider.vector_backend or "")
    vectors.ensure_model(conn, model, provider.provider_name, provider.dim, provider.source)
    vectors.record_backend(conn, model, provider.vector_backend, provider.backend_detail)
    report.counts["indexed_paths"] += catalog.mark_indexed(conn, shard, model)
    total = count_candidates(conn, shard, model)
    if limit:
        total = min(total, limit)
    report.counts["candidates"] = total
    if total:
        vocab = tags.load_vocabulary(provider.tag_vocabulary) if provider.zero_shot_tags else []
        vocab_vectors = (vocabulary_vectors(conn, provider, vocab, run_id, dsn=dsn, max_wait_seconds=max_wait_seconds)
                         if vocab else None)
        recorder = OutcomeRecorder(conn, shard, provider, report, run_id, vocab, vocab_vectors, dsn=dsn)
        items = candidates(conn, shard, provider, cache_dir, limit=limit)
        if provider.paid:
            _embed_paid(items, provider, recorder, dsn=dsn, total=total, max_wait_seconds=max_wait_seconds,
                        reschedule_seconds=reschedule_seconds, rate_window_seconds=rate_window_seconds,
                        progress=progress)
        else:
            _embed_local(items, provider, recorder, total=total, progress=progress)
        report.counts["indexed_paths"] += catalog.mark_indexed(conn, shard, model)
    report.seconds = time.perf_counter() - started
    return report


def _embed_local(
    items: Iterator[EmbedItem], provider: EmbeddingResource, recorder: OutcomeRecorder, *, total: int, progress: Progress | None
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


class _Claims:
    """Per-(image, model) advisory locks on one connection: two runs never buy the same vector."""

    def __init__(self, dsn: str, model: str) -> None:
        self.model = model
        self.conn = db.open_connection(dsn, autocommit=True)

    def _key(self, image_id: str) -> int:
        return int.from_bytes(hashlib.sha1(f"{self.model}\0{image_id}".encode()).digest()[:4], "big", signed=True)

    def claim(self, item: EmbedItem) -> bool:
        got = self.conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, self._key(item.image_id))
        ).fetchone()[0]
        if not got:
            return False
        if vectors.has_vector(self.conn, item.image_id, self.model):  # another run wrote it after our candidate query
            self.release(item)
            return False
        return True

    def release(self, item: EmbedItem) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NAMESPACE, self._key(item.image_id)))

    def close(self) -> None:
        self.conn.close()


class _PaidCaller:
    """One image through the shared rate limit: it takes one slot per billable request it costs,
    all at once. Once an image cannot get its slots in time (or keeps getting 429s), every later
    image is deferred for the whole shard at once."""

    def __init__(self, provider: EmbeddingResource, limiter: RateLimiter, max_wait_seconds: float,
                 reschedule_seconds: float) -> None:
        self.provider, self.limiter = provider, limiter
        self.max_wait_seconds, self.reschedule_seconds = max_wait_seconds, reschedule_seconds
        self.saturated = threading.Event()

    def deferred(self, item: EmbedItem) -> Deferred:
        return Deferred(item, "rate limit: rescheduled with the rest of the shard")

    def __call__(self, item: EmbedItem) -> EmbedOutcome | Deferred:
        throttled = 0
        name = self.provider.provider_name
        paid: EmbeddingError | None = None  # a caption bought before a 429 on the embedding request
        while True:
            if self.saturated.is_set():
                return _with_paid(self.deferred(item), paid)
            slots = self.provider.billable_requests(item)
            if 0 < self.limiter.per_window < slots:
                raise ProviderConfigError(
                    f"MAX_EMBEDDING_CALLS_PER_MIN={self.limiter.per_window} is below the {slots} billable requests "
                    f"one {name} image costs: set it to {slots} or more (0: no limit)"
                )
            if not self.limiter.acquire(self.max_wait_seconds, slots):
                self.saturated.set()
                return _with_paid(Deferred(item, f"rate limit: no call slot for {name} within {self.max_wait_seconds:g}s"), paid)
            try:
                return _with_paid(self.provider.embed_image(item), paid)
            except RateLimitedError as exc:
                throttled += 1
                if exc.caption:  # paid for before the 429: kept, and the retry only embeds (one slot)
                    paid, item = exc, dataclasses.replace(item, caption=exc.caption)
                self.limiter.pause(exc.retry_after if exc.retry_after is not None else self.reschedule_seconds, str(exc))
                if throttled >= MAX_429_PER_IMAGE:
                    self.saturated.set()
                    return _with_paid(Deferred(item, f"rate limit: {throttled} answers 429 in a row"), paid)
            except (ProviderConfigError, psycopg.Error):  # configuration, or the database went away: the run fails
                raise
            except EmbeddingError as exc:
                return _with_paid(EmbedOutcome(item.image_id, error_kind=exc.kind, error=str(exc), usage=exc.usage,
                                               caption=exc.caption, caption_model=exc.caption_model, tags=exc.tags), paid)
            except Exception as exc:  # noqa: BLE001 - one image must not abort the shard
                return _with_paid(
                    EmbedOutcome(item.image_id, error_kind="unexpected", error=f"{type(exc).__name__}: {exc}"), paid
                )


def _with_paid(result: EmbedOutcome | Deferred, paid: EmbeddingError | None) -> EmbedOutcome | Deferred:
    """Fold a caption bought in an earlier attempt of the same call (before a 429) into the
    result, so its cost and text are recorded. Only outcomes record costs: an image rescheduled
    while holding a paid caption becomes a ``rate-limited`` failure (retried by the queue, and
    the retry only embeds) rather than lose what was paid."""
    if paid is None:
        return result
    if isinstance(result, Deferred):
        return EmbedOutcome(result.item.image_id, error_kind="rate-limited", error=result.reason, usage=paid.usage,
                            caption=paid.caption, caption_model=paid.caption_model, tags=paid.tags)
    if paid.usage is not None:
        result.usage = paid.usage + result.usage if result.usage is not None else paid.usage
    if result.caption is None:
        result.caption, result.caption_model, result.tags = paid.caption, paid.caption_model, result.tags or paid.tags
    return result


def _embed_paid(
    items: Iterator[EmbedItem],
    provider: EmbeddingResource,
    recorder: OutcomeRecorder,
    *,
    dsn: str,
    total: int,
    max_wait_seconds: float,
    reschedule_seconds: float,
    rate_window_seconds: int,
    progress: Progress | None,
) -> None:
    """Paid calls, ``CONCURRENCY`` at a time, each written the moment it returns."""
    limiter = RateLimiter(dsn, provider.provider_name, provider.max_calls_per_min, window_seconds=rate_window_seconds)
    call = _PaidCaller(provider, limiter, max_wait_seconds, reschedule_seconds)
    claims = _Claims(dsn, recorder.model)
    # Every billable request is journaled before it is sent (intents.py): a killed run's calls
    # are fetched by id or counted as lost, never bought again unknowingly.
    journal = PaidCallJournal(dsn, provider.provider_name, recorder.model, recorder.run_id,
                              Usage(units=1, unit="call", cost_usd=provider.estimate_cost_per_image()))
    resumable = getattr(provider, "resumable_calls", False)
    deferred: list[Deferred] = []
    done = 0
    workers = max(1, provider.concurrency)
    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"embed-{provider.provider_name}")
    in_flight: dict[Future[EmbedOutcome | Deferred], EmbedItem] = {}
    try:
        def drain(block_until: int) -> None:
            nonlocal done
            while len(in_flight) > block_until:
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in finished:
                    item = in_flight.pop(future)
                    result = future.result()  # a ProviderConfigError propagates: the run fails
                    if isinstance(result, Deferred):
                        deferred.append(result)
                    else:
                        recorder.record([result])  # written before anything else can fail
                    claims.release(item)
                    recorder.paths.pop(item.image_id, None)
                    done += 1
                    if progress and (done % 25 == 0 or done == total):
                        progress(f"{provider.provider_name}: {done:,}/{total:,} images of shard {recorder.shard} "
                                 f"({recorder.report.paid_calls:,} paid requests, ${recorder.report.cost_usd:.4f} so far)")

        for item in items:
            if call.saturated.is_set():
                deferred.append(call.deferred(item))
                continue
            if not claims.claim(item):
                recorder.report.counts["claimed_elsewhere"] += 1
                continue
            recorder.paths[item.image_id] = item.path
            if not resumable:  # requests of a killed run that cannot be fetched: billed, lost
                journal.sweep(item.image_id)
            item = dataclasses.replace(item, journal=journal)
            in_flight[pool.submit(call, item)] = item
            drain(block_until=workers * 2 - 1)
        drain(block_until=0)
    finally:
        call.saturated.set()  # a config error: the calls still queued return at once
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
        journal.close()
        for key in ("resumed", "lost"):
            recorder.report.counts[f"paid_calls_{key}"] += journal.counts[key]
        recorder.defer(deferred, reschedule_seconds)

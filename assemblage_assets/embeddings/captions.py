"""Per-shard stage behind the ``captions`` asset: every derived image of the shard gets a caption
from the configured caption provider (``resources/caption/``), in ``images.caption`` with its
full-text index (``catalog.record_captions``). Plain functions over a psycopg connection.

- Idempotent: candidates are the shard's images without a caption of the active caption model,
  not errored and not waiting for a retry (``caption_queue``). A rerun finds only what is missing.
  Statuses are left alone: a caption is an annotation, not a stage of ``processing_log``.
- Never pays twice: a paid image is claimed (advisory lock per caption model and image) and
  re-checked before its call; its answer is written the moment it returns, the cost row
  (``embedding_usage_log``, purpose ``caption``) in the same transaction as the caption, so a
  stored caption always has its cost and a rerun never buys it again. When the caption cannot
  be written, the cost row is still written on its own.
- Crash-proof: every paid request is journaled (``intents.PaidCallJournal``, request
  ``caption``, under the caption model) before it is sent and settled in the transaction of its
  cost row and caption. A run killed between an answer and its commit leaves the intent open:
  Replicate's next attempt fetches the prediction by its stored id (no second create); OpenAI
  has no id, so the open intent is logged as a billed, lost call (``ok = false``, estimated
  price) and the image bought again: per kill at most the images submitted (``CONCURRENCY``
  running, up to ``CONCURRENCY - 1`` more answered but not yet committed), never under-counted
  (docs/reliability.md).
- Faults are per image: a broken reply, 4xx/5xx, timeout or undecodable image is recorded in
  ``caption_failures`` (with its cost when billed) and retried after a backoff; the shard goes
  on. Only configuration errors (credentials, model cannot load) fail the run.
- Rate limits: each paid call takes one slot of the provider's shared limiter
  (``rate_limit.RateLimiter``, the same counters and 429 pause as the provider's embeddings);
  when no slot comes in time the rest of the shard is rescheduled about 30 s later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from assemblage_assets.core import db
from assemblage_assets.core.batching import batched
from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.embeddings import caption_queue, intents, tags
from assemblage_assets.embeddings.intents import PaidCallJournal
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.embeddings.usage_log import UsageRow, log_usage
from assemblage_assets.images import catalog
from resources.caption import CaptionItem, CaptionOutcome, CaptionResource
from resources.caption.base import CAPTION_REQUEST
from resources.embedding.types import EmbeddingError, ProviderConfigError, RateLimitedError, Usage

DEFAULT_MAX_WAIT_SECONDS = 90.0
MAX_429_PER_IMAGE = 5
_LOCK_NAMESPACE = 7_312_025  # first key of the advisory locks claiming (image, caption model)


@dataclass
class CaptionReport(StageReport):
    model: str = ""
    provider: str = ""
    cost_usd: float = 0.0
    paid_calls: int = 0  # billable requests (``Usage.requests``), not images
    random_weights: bool = False
    errors_by_kind: dict[str, int] = field(default_factory=dict)


class CaptionRecorder:
    """Writes outcomes as they come: cost + settled journal + caption + cleared failure in one
    transaction, then tags (a bonus), then failures."""

    def __init__(self, conn: psycopg.Connection, shard: str, provider: CaptionResource, report: CaptionReport,
                 run_id: str | None, *, dsn: str = "") -> None:
        self.conn, self.shard, self.provider, self.report, self.run_id = conn, shard, provider, report, run_id
        self.dsn = dsn  # to reconnect: captions held in memory are written after a database restart
        self.model = provider.model_id
        self.paths: dict[str, str] = {}

    def record(self, outcomes: Sequence[CaptionOutcome]) -> None:
        ok = [o for o in outcomes if o.ok]
        failed = [o for o in outcomes if not o.ok]
        usage = [UsageRow(self.provider.provider_name, self.model, o.image_id, o.usage, purpose="caption", ok=o.ok,
                          run_id=self.run_id) for o in outcomes if o.usage is not None]
        paid_ids = [o.image_id for o in outcomes if o.usage is not None]
        try:
            self._write(usage, paid_ids, ok)
        except psycopg.OperationalError:
            if not self.dsn:
                raise
            # The database went away (a crash, a restart): reconnect (db.open_connection brings a
            # dead embedded server back) and write what was paid for, rather than buy it again.
            self.report.counts["reconnects"] += 1
            self.conn = db.open_connection(self.dsn, row_factory=dict_row, autocommit=True)
            self._write(usage, paid_ids, ok)
        self._after_write(ok, failed, outcomes)

    def _write(self, usage: list[UsageRow], paid_ids: list[str], ok: list[CaptionOutcome]) -> None:
        provider = self.provider.provider_name
        try:
            # a kill before this commit leaves the intents open: fetched by id or counted as lost
            with self.conn.transaction():
                log_usage(self.conn, usage)
                intents.settle(self.conn, provider, self.model, paid_ids)
                catalog.record_captions(self.conn, [(o.caption or "", self.model, o.image_id) for o in ok])
                caption_queue.record_success(self.conn, self.model, [o.image_id for o in ok])
        except psycopg.OperationalError:
            raise  # the database is gone: nothing was written, the intents stay open
        except psycopg.Error:
            with self.conn.transaction():  # what was paid stays on record even if the caption is lost
                log_usage(self.conn, usage)
                intents.settle(self.conn, provider, self.model, paid_ids)
            raise

    def _after_write(self, ok: list[CaptionOutcome], failed: list[CaptionOutcome],
                     outcomes: Sequence[CaptionOutcome]) -> None:
        by_image = {o.image_id: o.tags for o in ok if o.tags}
        if by_image:
            try:
                tags.write_tags(self.conn, self.model, by_image)
            except psycopg.Error as exc:  # tags are a bonus: never lose captions over them
                self.report.add_failure(self.shard, "tags", f"{type(exc).__name__}: {exc}")
        if failed:
            counts = caption_queue.record_failures(self.conn, self.model, self.shard, [
                (o.image_id, o.error_kind or "empty-output", o.error or "no caption", o.usage is not None) for o in failed
            ])
            self.report.counts["errored"] += counts["errored"]
            self.report.counts["queued_for_retry"] += counts["retry"]
        for o in outcomes:
            if o.usage is not None:
                self.report.paid_calls += o.usage.requests
                self.report.cost_usd += o.usage.cost_usd
        self.report.counts["captioned"] += len(ok)
        self.report.counts["failed"] += len(failed)
        for o in failed:
            kind = o.error_kind or "empty-output"
            self.report.errors_by_kind[kind] = self.report.errors_by_kind.get(kind, 0) + 1
            self.report.add_failure(self.paths.get(o.image_id, o.image_id), kind, o.error)

    def defer(self, image_ids: Sequence[str], reason: str, seconds: float) -> None:
        if image_ids:
            caption_queue.record_deferred(self.conn, self.model, self.shard, image_ids, reason, seconds)
            self.report.counts["rescheduled"] += len(image_ids)


def caption_shard(
    conn: psycopg.Connection,
    shard: str,
    provider: CaptionResource,
    *,
    dsn: str,
    cache_dir: Path,
    run_id: str | None = None,
    limit: int = 0,
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    reschedule_seconds: float = caption_queue.RESCHEDULE_SECONDS,
    rate_window_seconds: int = 60,
    progress: Progress | None = None,
) -> CaptionReport:
    """Caption the shard's images that lack a caption of ``provider``'s model; see the module docstring."""
    started = time.perf_counter()
    report = CaptionReport(model=provider.model_id, provider=provider.provider_name)
    if not provider.enabled:
        report.counts["disabled"] = 1
        return report
    report.random_weights = provider.random_weights
    total = caption_queue.count_missing(conn, shard, report.model)
    total = min(total, limit) if limit else total
    report.counts["candidates"] = total
    if total:
        recorder = CaptionRecorder(conn, shard, provider, report, run_id, dsn=dsn)
        items = caption_queue.candidates(conn, shard, report.model, cache_dir, limit=limit)
        ticker = _Ticker(provider, shard, total, started, progress)
        if provider.paid:
            _caption_paid(items, provider, recorder, ticker, dsn=dsn, max_wait_seconds=max_wait_seconds,
                          reschedule_seconds=reschedule_seconds, rate_window_seconds=rate_window_seconds)
        else:
            for batch in batched(items, max(1, provider.batch_size)):
                recorder.paths.update({item.image_id: item.path for item in batch})
                recorder.record(provider.caption_batch(batch))
                ticker.advance(len(batch), report)
    report.seconds = time.perf_counter() - started
    return report


class _Ticker:
    """Progress with an ETA every 25 images (and at the end)."""

    def __init__(self, provider: CaptionResource, shard: str, total: int, started: float, progress: Progress | None) -> None:
        self.name, self.shard, self.total, self.started, self.progress = provider.provider_name, shard, total, started, progress
        self.done, self.lock = 0, threading.Lock()

    def advance(self, n: int, report: CaptionReport) -> None:
        with self.lock:
            before, self.done = self.done, self.done + n
            if not self.progress or (before // 25 == self.done // 25 and self.done < self.total):
                return
            elapsed = time.perf_counter() - self.started
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            cost = f", {report.paid_calls:,} paid requests, ${report.cost_usd:.4f} so far" if report.paid_calls else ""
            self.progress(f"{self.name}: captioned {self.done:,}/{self.total:,} images of shard {self.shard} "
                          f"(ETA {eta:.0f}s{cost})")


class _Claims:
    """Per-(image, caption model) advisory locks on one connection: two runs never buy the same caption."""

    def __init__(self, dsn: str, model: str) -> None:
        self.model = model
        self.conn = psycopg.connect(dsn, autocommit=True)

    def _key(self, image_id: str) -> int:
        return int.from_bytes(hashlib.sha1(f"{self.model}\0{image_id}".encode()).digest()[:4], "big", signed=True)

    def claim(self, item: CaptionItem) -> bool:
        if not self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, self._key(item.image_id))).fetchone()[0]:
            return False
        if caption_queue.has_caption(self.conn, item.image_id, self.model):  # bought by another run meanwhile
            self.release(item)
            return False
        return True

    def release(self, item: CaptionItem) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NAMESPACE, self._key(item.image_id)))

    def close(self) -> None:
        self.conn.close()


def _paid_call(provider: CaptionResource, limiter: RateLimiter, saturated: threading.Event, item: CaptionItem,
               max_wait_seconds: float, reschedule_seconds: float) -> CaptionOutcome | None:
    """One image through the shared rate limit; None when it is rescheduled (no slot in time, or
    429 after 429: then every later image of the shard is rescheduled too)."""
    throttled = 0
    while not saturated.is_set():
        if not limiter.acquire(max_wait_seconds, 1):
            saturated.set()
            return None
        try:
            return provider.caption_image(item)
        except RateLimitedError as exc:  # refused, not billed: wait for Retry-After and try again
            throttled += 1
            limiter.pause(exc.retry_after if exc.retry_after is not None else reschedule_seconds, str(exc))
            if throttled >= MAX_429_PER_IMAGE:
                saturated.set()
        except (ProviderConfigError, psycopg.Error):  # configuration, or the journal's database went away
            raise
        except EmbeddingError as exc:
            return CaptionOutcome(item.image_id, error_kind=exc.kind, error=str(exc), usage=exc.usage)
        except Exception as exc:  # noqa: BLE001 - one image must not abort the shard
            return CaptionOutcome(item.image_id, error_kind="unexpected", error=f"{type(exc).__name__}: {exc}")
    return None


def _caption_paid(
    items: Iterator[CaptionItem], provider: CaptionResource, recorder: CaptionRecorder, ticker: _Ticker, *,
    dsn: str, max_wait_seconds: float, reschedule_seconds: float, rate_window_seconds: int,
) -> None:
    """Paid calls, ``CONCURRENCY`` at a time, each written the moment it returns."""
    limiter = RateLimiter(dsn, provider.provider_name, provider.max_calls_per_min, window_seconds=rate_window_seconds)
    claims = _Claims(dsn, recorder.model)
    # Every paid request is journaled before it is sent (intents.py), under the caption model
    journal = PaidCallJournal(dsn, provider.provider_name, recorder.model, recorder.run_id,
                              Usage(units=1, unit="call", cost_usd=provider.estimate_cost_per_image()),
                              purpose="caption")
    saturated = threading.Event()
    deferred: list[str] = []
    workers = max(1, provider.concurrency)
    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"caption-{provider.provider_name}")
    in_flight: dict[Future[CaptionOutcome | None], CaptionItem] = {}

    def drain(block_until: int) -> None:
        while len(in_flight) > block_until:
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in finished:
                item = in_flight.pop(future)
                outcome = future.result()  # a ProviderConfigError propagates: the run fails
                if outcome is None:
                    deferred.append(item.image_id)
                else:
                    recorder.record([outcome])  # written before anything else can fail
                claims.release(item)
                ticker.advance(1, recorder.report)

    try:
        for item in items:
            if saturated.is_set():
                deferred.append(item.image_id)
                continue
            if not claims.claim(item):
                recorder.report.counts["claimed_elsewhere"] += 1
                continue
            recorder.paths[item.image_id] = item.path
            if not provider.resumable_calls:  # requests of a killed run that cannot be fetched: billed, lost
                journal.sweep(item.image_id, CAPTION_REQUEST)
            item = dataclasses.replace(item, journal=journal)
            in_flight[pool.submit(_paid_call, provider, limiter, saturated, item, max_wait_seconds,
                                  reschedule_seconds)] = item
            drain(block_until=workers * 2 - 1)
        drain(block_until=0)
    finally:
        saturated.set()  # a config error: the calls still queued return at once
        pool.shutdown(wait=True, cancel_futures=True)
        for future in list(in_flight):
            # Answers that came back while an error unwound the loop are still written.
            if future.done() and not future.cancelled() and future.exception() is None:
                outcome = future.result()
                if outcome is not None and (outcome.ok or outcome.usage is not None):
                    recorder.record([outcome])
        limiter.close()
        claims.close()
        journal.close()
        for key in ("resumed", "lost"):
            recorder.report.counts[f"paid_calls_{key}"] += journal.counts[key]
        recorder.defer(deferred, f"rate limit: no {provider.provider_name} call slot; rescheduled", reschedule_seconds)

"""What an embeddings run writes for each outcome, and its report.

Order matters for money: the cost row of a paid call commits with the settlement of its
journaled requests (``intents``), its vector, caption and queue in one transaction (should the
vector be refused, the cost row and settlement are committed alone), then tags (a bonus: never
worth losing a vector over). Failures
go to the retry queue; images over the rate limit are deferred without counting a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg.rows import dict_row

from assemblage_assets.core import db
from assemblage_assets.core.reports import StageReport
from assemblage_assets.embeddings import intents, retry_queue, tags, vectors
from assemblage_assets.embeddings.usage_log import UsageRow, log_usage
from assemblage_assets.images import catalog
from resources.embedding import EmbeddingResource
from resources.embedding.types import EmbedItem, EmbedOutcome


@dataclass
class EmbedReport(StageReport):
    model: str = ""
    provider: str = ""
    backend: str = ""  # local CLIP: torch-fp32, onnx-int8, ...; empty for remote providers
    dim: int = 0
    cost_usd: float = 0.0
    paid_calls: int = 0  # billable requests (``Usage.requests``), not images
    rate_limit_waited: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Deferred:
    item: EmbedItem
    reason: str



class OutcomeRecorder:
    """Writes outcomes: vectors, costs, captions, tags and the queue, each batch committed."""

    def __init__(self, conn: psycopg.Connection, shard: str, provider: EmbeddingResource, report: EmbedReport,
                 run_id: str | None, vocab: list[str], vocab_vectors: np.ndarray | None, *, dsn: str = "") -> None:
        self.conn, self.shard, self.provider, self.report, self.run_id = conn, shard, provider, report, run_id
        self.dsn = dsn  # to reconnect: results held in memory are written after a database restart
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
            stacked = np.stack([o.vector for o in ok])
            for o, found in zip(ok, tags.zero_shot(stacked, self.vocab, self.vocab_vectors), strict=True):
                tag_rows.setdefault(self.model, {})[o.image_id] = found
        paid_ids = [o.image_id for o in outcomes if o.usage is not None]
        try:
            self._write(usage_rows, paid_ids, ok, captions)
        except psycopg.OperationalError:
            if not self.dsn:
                raise
            # The database went away (a crash, a restart): reconnect (db.open_connection brings a
            # dead embedded server back) and write what was paid for, rather than drop it.
            self.report.counts["reconnects"] += 1
            self.conn = db.open_connection(self.dsn, row_factory=dict_row, autocommit=True)
            self._write(usage_rows, paid_ids, ok, captions)
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
                self.report.paid_calls += o.usage.requests
                self.report.cost_usd += o.usage.cost_usd
        self.report.counts["embedded"] += len(ok)
        self.report.counts["failed"] += len(failed)
        self.report.counts["tags"] += sum(len(v) for m in tag_rows.values() for v in m.values())
        for o in failed:
            kind = o.error_kind or "error"
            self.report.errors_by_kind[kind] = self.report.errors_by_kind.get(kind, 0) + 1
            self.report.add_failure(self.paths.get(o.image_id, o.image_id), kind, o.error)

    def _write(self, usage_rows: list[UsageRow], paid_ids: list[str], ok: list[EmbedOutcome],
               captions: list[tuple[str, str | None, str]]) -> None:
        try:
            # Cost rows, the journal's settlement, vectors, captions and the queue commit together:
            # a crash before the commit leaves the intents open, and the next run fetches the
            # results by id (or counts them lost) instead of losing what was paid.
            with self.conn.transaction():
                log_usage(self.conn, usage_rows)
                intents.settle(self.conn, self.provider.provider_name, self.model, paid_ids)
                if ok:
                    vectors.write_vectors(self.conn, self.model, self.provider.provider_name,
                                          [o.image_id for o in ok], np.stack([o.vector for o in ok]),
                                          backend=self.provider.vector_backend)
                catalog.record_captions(self.conn, captions)
                retry_queue.record_success(self.conn, self.model, [o.image_id for o in ok])
        except psycopg.OperationalError:
            raise  # the database is gone: nothing was written, the intents stay open
        except psycopg.Error:
            # The vectors cannot be stored (a constraint, say): what was paid for is on record anyway.
            with self.conn.transaction():
                log_usage(self.conn, usage_rows)
                intents.settle(self.conn, self.provider.provider_name, self.model, paid_ids)
            raise

    def defer(self, deferred: Sequence[Deferred], seconds: float) -> None:
        if deferred:
            retry_queue.record_deferred(
                self.conn, self.model, self.shard, [d.item.image_id for d in deferred], deferred[0].reason, seconds
            )
            self.report.counts["rescheduled"] += len(deferred)

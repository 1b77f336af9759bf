"""``assemblage embed --reembed``: redo a model's vectors whose backend differs from the one
configured now (``CLIP_BACKEND``/``CLIP_PRECISION``), for a uniform catalogue.

Vectors of one model from different backends share its space and index, so nothing forces
this; it is for users who want every row computed the same way. Each batch is upserted with
the new backend in its own transaction, and only rows whose backend still differs are picked:
a rerun after a crash continues where it stopped, and a finished model has nothing to do. An
image that cannot be decoded any more keeps its old vector (counted, not queued).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.core.reports import Progress
from assemblage_assets.embeddings import vectors
from resources.embedding import EmbeddingResource
from resources.embedding.types import EmbedItem, ProviderConfigError

# Over image_embeddings e; parameters %(model)s, %(backend)s, %(shard)s.
_STALE = """e.model = %(model)s AND e.backend IS DISTINCT FROM %(backend)s
      AND (%(shard)s::text IS NULL OR EXISTS (
          SELECT 1 FROM processing_log s WHERE s.image_id = e.image_id AND s.shard = %(shard)s))"""


@dataclass
class ReembedReport:
    model: str
    backend: str
    stale: int = 0
    redone: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def count_stale(conn: psycopg.Connection, model: str, backend: str, shard: str | None = None) -> int:
    """Vectors of ``model`` not computed by ``backend``."""
    return int(conn.cursor(row_factory=tuple_row).execute(
        f"SELECT count(*) FROM image_embeddings e WHERE {_STALE}",
        {"model": model, "backend": backend, "shard": shard},
    ).fetchone()[0])


def stale_items(conn: psycopg.Connection, model: str, backend: str, cache_dir: Path, *, shard: str | None = None,
                limit: int = 0, page_size: int = 500) -> Iterator[EmbedItem]:
    """The images behind those vectors, paged by image id (flat memory on any catalogue)."""
    after, seen = "00000000-0000-0000-0000-000000000000", 0
    while True:
        rows = conn.cursor(row_factory=dict_row).execute(
            f"""SELECT e.image_id::text AS image_id, i.thumbnail_key,
                       (SELECT p.local_path FROM processing_log p WHERE p.image_id = e.image_id
                        ORDER BY p.local_path LIMIT 1) AS local_path
                FROM image_embeddings e JOIN images i ON i.id = e.image_id
                WHERE {_STALE} AND e.image_id > %(after)s::uuid
                ORDER BY e.image_id LIMIT %(page)s""",
            {"model": model, "backend": backend, "shard": shard, "after": after, "page": page_size},
        ).fetchall()
        for row in rows:
            if limit and seen >= limit:
                return
            seen += 1
            thumbnail = cache_dir / row["thumbnail_key"] if row["thumbnail_key"] else None
            yield EmbedItem(image_id=row["image_id"], path=row["local_path"] or "",
                            thumbnail_path=str(thumbnail) if thumbnail is not None and thumbnail.is_file() else None)
        if len(rows) < page_size:
            return
        after = rows[-1]["image_id"]


def reembed(conn: psycopg.Connection, provider: EmbeddingResource, cache_dir: Path, *, shard: str | None = None,
            limit: int = 0, progress: Progress | None = None) -> ReembedReport:
    """Recompute ``provider``'s model's vectors that another backend wrote; see the module docstring."""
    backend = provider.vector_backend
    if provider.paid or backend is None or not hasattr(provider, "embed_stream"):
        raise ProviderConfigError(f"--reembed redoes local CLIP vectors; {provider.provider_name} has no backend choice")
    started = time.perf_counter()
    provider.check_dimension()
    model = provider.model_id
    vectors.ensure_model(conn, model, provider.provider_name, provider.dim, provider.source)
    vectors.record_backend(conn, model, backend, provider.backend_detail)
    report = ReembedReport(model, backend, stale=count_stale(conn, model, backend, shard))
    total = min(report.stale, limit) if limit else report.stale
    done = 0
    for outcomes in provider.embed_stream(stale_items(conn, model, backend, cache_dir, shard=shard, limit=limit)):
        ok = [o for o in outcomes if o.ok]
        if ok:
            vectors.write_vectors(conn, model, provider.provider_name, [o.image_id for o in ok],
                                  np.stack([o.vector for o in ok]), backend=backend)
        report.redone += len(ok)
        for o in outcomes:
            if not o.ok:
                report.failed += 1
                report.errors[o.error_kind or "error"] = report.errors.get(o.error_kind or "error", 0) + 1
        done += len(outcomes)
        if progress:
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (total - done) if done else 0.0
            progress(f"re-embedded {done:,}/{total:,} vectors of {model} with {backend} (ETA {eta:,.0f}s)")
    report.seconds = time.perf_counter() - started
    return report

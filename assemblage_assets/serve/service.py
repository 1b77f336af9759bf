"""What the API does, without HTTP: text search fused from three ranked lists, image search
(by id or by an uploaded file), browsing, details, shards, duplicates.

Text search is reciprocal rank fusion (Cormack et al. 2009) of the CLIP text-embedding nearest
images, the caption full-text matches and the tag matches: each list contributes
``1 / (RRF_K + rank)``, so an image the caption names comes up even when its vector misses.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from assemblage_assets.core import settings
from assemblage_assets.core.imaging import APPROVED_FORMATS, sniff_format
from assemblage_assets.core.tags import normalize_tag
from assemblage_assets.embeddings import search, text_calls, vectors
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.images.probe import probe_file
from assemblage_assets.serve import queries
from assemblage_assets.serve.queries import Filters
from resources.embedding.types import EmbeddingError, EmbedItem

RRF_K = 60
FUSION_WINDOW = 100  # candidates per list (and page depths beyond it grow it by as much)
MODEL_CACHE_SECONDS = 30.0  # pick_model counts vectors: not once per request


class NotFound(LookupError):
    pass


class BadRequest(ValueError):
    """The client's input cannot be served (4xx with this message)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def _refused(exc: text_calls.CallRefused) -> BadRequest:
    """The provider's shared rate limit is full: 429, with when to try again."""
    return BadRequest(str(exc), 429, {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))})


def fuse(ranked: dict[str, Sequence[str]], k: int = RRF_K) -> list[tuple[str, float, dict[str, int]]]:
    """Reciprocal rank fusion: (id, score, {list: 1-based rank}) by score, then id."""
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, ids in ranked.items():
        for rank, image_id in enumerate(ids, 1):
            scores[image_id] = scores.get(image_id, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(image_id, {})[name] = rank
    return [(i, scores[i], ranks[i]) for i in sorted(scores, key=lambda i: (-scores[i], i))]


def query_tags(text: str) -> list[str]:
    """Tags a query may name: every 1-3 word run of its normalized words ("black and white")."""
    words = text.split()
    found = []
    for size in (3, 2, 1):
        for start in range(len(words) - size + 1):
            tag = normalize_tag(" ".join(words[start:start + size]))
            if tag and tag not in found:
                found.append(tag)
    return found[:32]


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_offset: int | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SearchService:
    """One per app: a small connection pool and the text/image provider of the searched model."""

    def __init__(self, dsn: str, provider: Any = None, *, pool_size: int = 4, ef_search: int | None = None,
                 max_pixels: int | None = None) -> None:
        self.dsn = dsn
        self.pool = ConnectionPool(dsn, kwargs={"autocommit": True, "row_factory": dict_row}, min_size=1,
                                   max_size=pool_size, configure=search.prepare, open=True, name="assemblage-serve")
        self.active = provider
        self.ef_search = ef_search
        self.max_pixels = max_pixels or settings.env_int("MAX_IMAGE_PIXELS", settings.DEFAULT_MAX_IMAGE_PIXELS)
        self._model: tuple[float, dict[str, Any]] | None = None
        self._providers: dict[str, Any] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for limiter in self._limiters.values():
                limiter.close()
            self._limiters.clear()
        self.pool.close()

    def limiter(self, provider: Any) -> RateLimiter | None:
        """The shared rate limiter of a paid provider (one connection, kept for the app's life)."""
        if not provider.paid:
            return None
        with self._lock:
            if provider.provider_name not in self._limiters:
                self._limiters[provider.provider_name] = RateLimiter(self.dsn, provider.provider_name,
                                                                     provider.max_calls_per_min)
            return self._limiters[provider.provider_name]

    def warm(self) -> str:
        """Load the text model of the searched model now, not on the first query; says which."""
        try:
            with self.pool.connection() as conn:
                model = self.model(conn)
            self.provider(model)
        except (BadRequest, EmbeddingError, OSError) as exc:
            return f"text search not ready: {exc}"
        return f"searching {model['model']} ({model['provider']}, {model['dim']}-d)"

    # models and providers ----------------------------------------------------------------------

    def model(self, conn: Any) -> dict[str, Any]:
        cached = self._model
        if cached and time.monotonic() - cached[0] < MODEL_CACHE_SECONDS:
            return cached[1]
        try:
            model = search.pick_model(conn, None, self.active.model_id if self.active else None)
        except search.SearchError as exc:
            raise BadRequest(str(exc), 409) from None
        self._model = (time.monotonic(), model)
        return model

    def provider(self, model: dict[str, Any]) -> Any:
        """The configured provider when it made these vectors, else a local CLIP from the model's
        recorded source; loaded once."""
        with self._lock:
            if model["model"] not in self._providers:
                from resources.embedding import LocalClipEmbedding

                if self.active is not None and self.active.model_id == model["model"]:
                    found = self.active
                elif model["provider"] == "local_clip" and model.get("source"):
                    found = LocalClipEmbedding(clip_model=model["source"])
                else:
                    raise BadRequest(f"no provider configured for model {model['model']!r} (EMBEDDING_PROVIDER)", 409)
                if isinstance(found, LocalClipEmbedding):
                    try:
                        found.load()
                    except EmbeddingError as exc:  # a server-side fault, said plainly
                        raise BadRequest(f"the text model of {model['model']!r} cannot load: {exc}", 503) from None
                self._providers[model["model"]] = found
            return self._providers[model["model"]]

    # searches ------------------------------------------------------------------------------------

    def current_model(self) -> dict[str, Any]:
        cached = self._model
        if cached and time.monotonic() - cached[0] < MODEL_CACHE_SECONDS:
            return cached[1]
        with self.pool.connection() as conn:
            return self.model(conn)

    def search_text(self, text: str, f: Filters, limit: int, offset: int, ef_search: int | None = None) -> Page:
        model = self.current_model()
        provider = self.provider(model)
        depth = offset + limit
        # Each list is cut at a fixed window, not at the page's depth: a fused order computed on
        # shorter lists would differ, and pages would overlap or skip.
        window_size = FUSION_WINDOW * -(-depth // FUSION_WINDOW)
        try:  # a paid provider: a slot of its shared limit, and one cost row (text_calls)
            vector = text_calls.embed_texts(self.pool.connection, provider, [text], purpose="text",
                                            limiter=self.limiter(provider))[0]
        except text_calls.CallRefused as exc:
            raise _refused(exc) from None
        except EmbeddingError as exc:
            raise BadRequest(f"text embedding failed: {exc}", 502) from None
        with self.pool.connection() as conn:
            lists = {
                "vector": queries.vector_hits(conn, model, vector, window_size, f,
                                              ef_search=ef_search or self.ef_search),
                "caption": queries.caption_hits(conn, text, window_size, f),
                "tags": queries.tag_hits(conn, query_tags(text), window_size, f),
            }
            fused = fuse({name: [r["image_id"] for r in rows] for name, rows in lists.items()})
            window = fused[offset:depth]
            found = queries.cards(conn, [i for i, _, _ in window])
        distances = {r["image_id"]: r["distance"] for r in lists["vector"]}
        items = [{**found[i], "score": round(score, 6), "ranks": ranks, "distance": distances.get(i)}
                 for i, score, ranks in window if i in found]
        return Page(items, depth if len(fused) > depth else None, model["model"])

    def _nearest_page(self, conn: Any, model: dict[str, Any], vector: np.ndarray, f: Filters, limit: int,
                      offset: int, ef_search: int | None, exclude: str | None) -> Page:
        depth = offset + limit
        hits = queries.vector_hits(conn, model, vector, depth + 1, f, ef_search=ef_search or self.ef_search,
                                   exclude=exclude)
        window = hits[offset:depth]
        found = queries.cards(conn, [h["image_id"] for h in window])
        items = [{**found[h["image_id"]], "distance": h["distance"]} for h in window if h["image_id"] in found]
        return Page(items, depth if len(hits) > depth else None, model["model"])

    def like(self, image_id: str, f: Filters, limit: int, offset: int, ef_search: int | None = None) -> Page:
        with self.pool.connection() as conn:
            model = self.model(conn)
            vector = vectors.stored_vector(conn, image_id, model["model"])
            if vector is None:
                if queries.media(conn, image_id) is None:
                    raise NotFound(f"no image {image_id}")
                raise BadRequest(f"image {image_id} has no vector for model {model['model']!r} yet", 409)
            return self._nearest_page(conn, model, vector, f, limit, offset, ef_search, image_id)

    def by_upload(self, chunks: Iterable[bytes], max_bytes: int, f: Filters, limit: int,
                  ef_search: int | None = None) -> Page:
        """Images like an uploaded file, validated as ingestion would (format from the content,
        pixel cap) in a temporary file deleted before the answer; nothing is stored."""
        with self.pool.connection() as conn:
            model = self.model(conn)
        provider = self.provider(model)
        with tempfile.TemporaryDirectory(prefix="assemblage-upload-") as folder:
            path, size = _spool(chunks, max_bytes, folder)
            probe = probe_file(path, size, self.max_pixels)
            if probe.status != "pending":
                raise BadRequest(f"not an acceptable image ({probe.error_kind}): {probe.error_message}", 400)
            try:  # the pool is held only to write the cost row, not for the call
                outcome = text_calls.embed_image(self.pool.connection, provider, EmbedItem(str(probe.image_id), path),
                                                 purpose="search-upload", limiter=self.limiter(provider))
            except text_calls.CallRefused as exc:
                raise _refused(exc) from None
            except EmbeddingError as exc:
                raise BadRequest(f"cannot embed the upload: {exc}", 400) from None
        with self.pool.connection() as conn:
            return self._nearest_page(conn, model, outcome.vector, f, limit, 0, ef_search, None)

    # browsing ------------------------------------------------------------------------------------

    def browse(self, f: Filters, limit: int, after: tuple[Any, str] | None) -> tuple[list[dict[str, Any]], Any]:
        with self.pool.connection() as conn:
            rows = queries.list_images(conn, f, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1]["created_at"], rows[-1]["image_id"]) if more else None

    def detail(self, image_id: str) -> dict[str, Any]:
        with self.pool.connection() as conn:
            row = queries.image_detail(conn, image_id)
        if row is None:
            raise NotFound(f"no image {image_id}")
        return row

    def shards(self, limit: int, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        with self.pool.connection() as conn:
            rows = queries.shard_status(conn, limit + 1, after)
        return rows[:limit], rows[limit - 1]["shard"] if len(rows) > limit else None

    def shard(self, key: str) -> dict[str, Any]:
        with self.pool.connection() as conn:
            rows = queries.shard_status(conn, 1, None, only=key)
        if not rows:
            raise NotFound(f"no shard {key!r}")
        return rows[0]

    def failures(self, key: str, limit: int, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        self.shard(key)
        with self.pool.connection() as conn:
            rows = queries.shard_failures(conn, key, limit + 1, after)
        return rows[:limit], rows[limit - 1]["path"] if len(rows) > limit else None

    def duplicates(self, limit: int, after: int | None) -> tuple[list[dict[str, Any]], int | None]:
        with self.pool.connection() as conn:
            rows = queries.duplicate_groups(conn, limit + 1, after)
        return rows[:limit], rows[limit - 1]["group_id"] if len(rows) > limit else None

    def media(self, image_id: str) -> dict[str, Any]:
        with self.pool.connection() as conn:
            row = queries.media(conn, image_id)
        if row is None:
            raise NotFound(f"no image {image_id}")
        return row


def _spool(chunks: Iterable[bytes], max_bytes: int, folder: str) -> tuple[str, int]:
    """Write the upload (at most ``max_bytes``) under a name with the extension of its content."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > max_bytes:
            raise BadRequest(f"upload larger than {max_bytes:,} bytes (SERVE_MAX_UPLOAD_BYTES)", 413)
    if not data:
        raise BadRequest("empty upload", 400)
    detected = sniff_format(bytes(data[:32]))
    if detected not in APPROVED_FORMATS:
        raise BadRequest(f"unsupported upload: {detected or 'not a recognised image'}", 415)
    path = os.path.join(folder, f"upload.{APPROVED_FORMATS[detected][1]}")
    with open(path, "wb") as fh:
        fh.write(data)
    return path, len(data)

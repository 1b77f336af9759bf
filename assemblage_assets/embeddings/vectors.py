"""Vectors in pgvector: one row per (image, model) in ``image_embeddings``, written in bulk with
binary COPY, and one partial HNSW cosine index per model.

The column has no fixed dimension (models of any size coexist); each model's index casts to
its dimension and is restricted to its rows::

    CREATE INDEX ... USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE model = '...'

Queries use the same expression and predicate (``search.py``), so the planner picks it.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from assemblage_assets.core import settings
from resources.embedding.types import ProviderConfigError

HNSW_MAX_DIM = 2000  # pgvector 0.6: HNSW indexes vectors up to 2,000 dimensions
_INDEX_LOCK_KEY = 7_312_024_003
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def index_name(model: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:30]
    return f"image_embeddings_hnsw_{slug}_{hashlib.sha1(model.encode()).hexdigest()[:8]}"


def hnsw_params() -> tuple[int, int]:
    """(m, ef_construction) of new indexes: ``INDEX_HNSW_M`` / ``INDEX_HNSW_EF_CONSTRUCTION``,
    pgvector's defaults 16 / 64 unless set."""
    return settings.env_int("INDEX_HNSW_M", 16), settings.env_int("INDEX_HNSW_EF_CONSTRUCTION", 64)


def index_ddl(model: str, dim: int, name: str, *, concurrently: bool = False) -> sql.Composed:
    """``CREATE INDEX`` of a model's partial HNSW cosine index (the expression and predicate
    ``search.nearest`` queries with)."""
    m, ef_construction = hnsw_params()
    return sql.SQL(
        "CREATE INDEX {concurrently} IF NOT EXISTS {name} ON image_embeddings USING hnsw "
        "((embedding::vector({dim})) vector_cosine_ops) WITH (m = {m}, ef_construction = {ef}) WHERE model = {model}"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY" if concurrently else ""), name=sql.Identifier(name),
        dim=sql.Literal(int(dim)), m=sql.Literal(m), ef=sql.Literal(ef_construction), model=sql.Literal(model),
    )


def defer_index() -> bool:
    """Bulk-load mode (``EMBED_DEFER_INDEX=1``): new models get no index until finalize."""
    return settings.env_bool("EMBED_DEFER_INDEX", False)


def ensure_model(
    conn: psycopg.Connection, model: str, provider: str, dim: int, source: str = "", *, defer: bool | None = None
) -> str | None:
    """Register the model and create its HNSW index on first use; returns the index name
    (None above pgvector's HNSW dimension limit, or while the index is deferred: search then
    scans). Refuses a second dimension for a model id already stored.

    In bulk-load mode (``defer``, default ``EMBED_DEFER_INDEX``) a new model is recorded as
    ``deferred`` and no index is created: every insert into an HNSW index walks the graph, so
    building once at the end (``vector_index.finalize``) is far cheaper. A deferred model stays
    deferred, whatever the mode of later runs, until finalize builds its index.
    """
    defer = defer_index() if defer is None else defer
    cur = conn.cursor(row_factory=dict_row)
    known = cur.execute(
        "SELECT dim, index_name, index_state FROM embedding_models WHERE model = %s", (model,)
    ).fetchone()
    if known is not None:
        if known["dim"] != dim:
            raise ProviderConfigError(
                f"model {model!r} already has {known['dim']}-d vectors stored, the provider now gives {dim}-d; "
                "give the new model its own id"
            )
        if known["index_state"] != "ready" or _index_exists(conn, known["index_name"]):
            return known["index_name"]
    name = index_name(model) if dim <= HNSW_MAX_DIM else None
    state = "unsupported" if name is None else "deferred" if defer else "ready"
    with conn.transaction():
        # Two runs starting the same new model must not race on CREATE INDEX.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INDEX_LOCK_KEY,))
        if state == "ready":
            conn.execute(index_ddl(model, dim, name))
        conn.execute(
            """INSERT INTO embedding_models (model, provider, dim, source, index_name, index_state)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (model) DO UPDATE SET index_name = EXCLUDED.index_name, index_state = EXCLUDED.index_state,
                   source = COALESCE(NULLIF(EXCLUDED.source, ''), embedding_models.source)""",
            (model, provider, dim, source, None if state == "deferred" else name, state),
        )
    return None if state == "deferred" else name


def record_backend(conn: psycopg.Connection, model: str, backend: str | None, detail: dict) -> None:
    """The backend the model's latest run used, and why (``auto``'s measurement, build figures)."""
    if backend is None:
        return
    conn.execute("UPDATE embedding_models SET backend = %s, backend_detail = %s::jsonb WHERE model = %s",
                 (backend, json.dumps(detail, default=str), model))


def backend_counts(conn: psycopg.Connection, model: str | None = None) -> list[dict]:
    """Vectors per (model, backend): a mixed catalogue shows as several rows of one model."""
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT model, backend, count(*) AS vectors FROM image_embeddings
           WHERE %(model)s::text IS NULL OR model = %(model)s GROUP BY model, backend ORDER BY model, backend""",
        {"model": model},
    ).fetchall()


def _index_exists(conn: psycopg.Connection, name: str) -> bool:
    return bool(conn.cursor(row_factory=tuple_row).execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0])


def _text_field(value: str) -> tuple[str, bytes]:
    data = value.encode()
    return f"S{max(1, len(data))}", data


def copy_payload(image_ids: Sequence[str], vectors: np.ndarray, *, model: str | None = None,
                 provider: str | None = None, backend: str | None = None) -> bytes:
    """The whole binary COPY stream, built with numpy in one go: rows of (uuid, vector), or
    (uuid, model, provider, dim, vector) when ``model`` and ``provider`` are given, plus
    ``backend`` after ``provider`` when that is given too."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    fields: list[tuple] = [("fields", ">i2"), ("id_len", ">i4"), ("id", "S16")]
    extra = model is not None and provider is not None
    if extra:
        model_type, model_bytes = _text_field(model)
        provider_type, provider_bytes = _text_field(provider)
        fields += [("m_len", ">i4"), ("m", model_type), ("p_len", ">i4"), ("p", provider_type)]
        if backend is not None:
            backend_type, backend_bytes = _text_field(backend)
            fields += [("b_len", ">i4"), ("b", backend_type)]
        fields += [("d_len", ">i4"), ("d", ">i4")]
    fields += [("vec_len", ">i4"), ("vec_dim", ">i2"), ("unused", ">i2"), ("vec", ">f4", (dim,))]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["fields"] = (6 if backend is not None else 5) if extra else 2
    rows["id_len"] = 16
    rows["id"] = [uuid.UUID(str(i)).bytes for i in image_ids]
    if extra:
        rows["m_len"], rows["m"] = len(model_bytes), model_bytes
        rows["p_len"], rows["p"] = len(provider_bytes), provider_bytes
        if backend is not None:
            rows["b_len"], rows["b"] = len(backend_bytes), backend_bytes
        rows["d_len"], rows["d"] = 4, dim
    rows["vec_len"] = 4 + 4 * dim
    rows["vec_dim"] = dim
    rows["unused"] = 0
    rows["vec"] = vectors
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def write_vectors(
    conn: psycopg.Connection, model: str, provider: str, image_ids: Sequence[str], vectors: np.ndarray,
    backend: str | None = None,
) -> int:
    """Upsert vectors for ``image_ids`` with binary COPY (idempotent: a rerun replaces, never
    duplicates); ``backend`` (``onnx-int8``) is recorded on each row.

    Fast path: one COPY straight into ``image_embeddings`` (the stage only writes images that
    had no vector). If any row already exists, that COPY is rolled back to its savepoint and
    the batch goes through a staging table and ``INSERT ... ON CONFLICT DO UPDATE`` instead.
    """
    if len(image_ids) == 0:
        return 0
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(image_ids):
        raise ValueError(f"{len(image_ids)} ids but vectors of shape {vectors.shape}")
    dim = int(vectors.shape[1])
    if len(set(image_ids)) == len(image_ids):
        try:
            with conn.transaction(), conn.cursor() as cur:
                columns = "image_id, model, provider, backend, dim, embedding" if backend is not None else \
                    "image_id, model, provider, dim, embedding"
                with cur.copy(f"COPY image_embeddings ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(copy_payload(image_ids, vectors, model=model, provider=provider, backend=backend))
                return len(image_ids)
        except psycopg.errors.UniqueViolation:
            pass  # some already stored: upsert below
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS embedding_stage (image_id uuid NOT NULL, embedding vector NOT NULL) "
            "ON COMMIT DELETE ROWS"
        )
        with cur.copy("COPY embedding_stage (image_id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(copy_payload(image_ids, vectors))
        cur.execute(
            """INSERT INTO image_embeddings (image_id, model, provider, backend, dim, embedding)
               SELECT DISTINCT ON (image_id) image_id, %s, %s, %s, %s, embedding FROM embedding_stage
               ON CONFLICT (image_id, model) DO UPDATE SET
                   embedding = EXCLUDED.embedding, dim = EXCLUDED.dim, provider = EXCLUDED.provider,
                   backend = EXCLUDED.backend, created_at = now()""",
            (model, provider, backend, dim),
        )
        return cur.rowcount


def write_vectors_rowwise(
    conn: psycopg.Connection, model: str, provider: str, image_ids: Sequence[str], vectors: np.ndarray
) -> int:
    """The naive way, one INSERT per row (the benchmark's baseline; not used by the stage)."""
    dim = int(np.asarray(vectors).shape[1])
    with conn.transaction(), conn.cursor() as cur:
        for image_id, vector in zip(image_ids, vectors, strict=True):
            cur.execute(
                """INSERT INTO image_embeddings (image_id, model, provider, dim, embedding)
                   VALUES (%s, %s, %s, %s, %s::vector)
                   ON CONFLICT (image_id, model) DO UPDATE SET embedding = EXCLUDED.embedding""",
                (image_id, model, provider, dim, "[" + ",".join(map(repr, map(float, vector))) + "]"),
            )
    return len(image_ids)


def stored_vector(conn: psycopg.Connection, image_id: str, model: str) -> np.ndarray | None:
    row = conn.cursor(row_factory=tuple_row).execute(
        "SELECT embedding::text FROM image_embeddings WHERE image_id = %s AND model = %s", (image_id, model)
    ).fetchone()
    return None if row is None else np.array(row[0].strip("[]").split(","), dtype=np.float32)


def has_vector(conn: psycopg.Connection, image_id: str, model: str) -> bool:
    return bool(conn.cursor(row_factory=tuple_row).execute(
        "SELECT EXISTS (SELECT 1 FROM image_embeddings WHERE image_id = %s AND model = %s)", (image_id, model)
    ).fetchone()[0])


def shard_vector_dims(conn: psycopg.Connection, shard: str, model: str, dim: int) -> tuple[int, int]:
    """(vectors of the shard's images for ``model``, how many of them are not ``dim``-d)."""
    row = conn.cursor(row_factory=tuple_row).execute(
        """SELECT count(*), count(*) FILTER (WHERE e.dim <> %s OR vector_dims(e.embedding) <> %s)
           FROM image_embeddings e WHERE e.model = %s
             AND EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = e.image_id AND p.shard = %s)""",
        (dim, dim, model, shard),
    ).fetchone()
    return int(row[0]), int(row[1])


# --- embedding_models: the index state of each model -------------------------------------------


def models_for_index(conn: psycopg.Connection, model: str | None = None) -> list[dict]:
    """Every model (or one) with its index name and state, oldest first."""
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT model, dim, index_name, index_state FROM embedding_models "
        "WHERE %(model)s::text IS NULL OR model = %(model)s ORDER BY created_at, model",
        {"model": model},
    ).fetchall()


def index_states(conn: psycopg.Connection) -> list[dict]:
    """What ``assemblage index status`` shows: per model its vectors, index state and last build."""
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT model, dim, index_state, index_name, index_build_seconds, index_params,
                  (SELECT count(*) FROM image_embeddings e WHERE e.model = m.model) AS vectors
           FROM embedding_models m ORDER BY created_at"""
    ).fetchall()


def record_index_ready(conn: psycopg.Connection, model: str, name: str) -> None:
    """A valid index exists (built by a finalize that stopped before recording it)."""
    conn.execute("UPDATE embedding_models SET index_name = %s, index_state = 'ready' WHERE model = %s", (name, model))


def record_index_built(conn: psycopg.Connection, model: str, name: str, seconds: float | None, params: dict) -> None:
    conn.execute(
        """UPDATE embedding_models SET index_name = %s, index_state = 'ready', index_built_at = now(),
               index_build_seconds = %s, index_params = %s::jsonb WHERE model = %s""",
        (name, seconds, json.dumps(params), model),
    )


def count_vectors(conn: psycopg.Connection, model: str) -> int:
    return int(conn.cursor(row_factory=tuple_row).execute(
        "SELECT count(*) FROM image_embeddings WHERE model = %s", (model,)).fetchone()[0])

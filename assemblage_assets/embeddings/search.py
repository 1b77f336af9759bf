"""Nearest images by cosine distance: text -> image (``assemblage search "orange car"``) and
image -> image (``assemblage search --like IMAGE_ID_OR_PATH``).

Queries use the model's partial HNSW index: the same cast (``embedding::vector(dim)``) and
the same predicate (``model = '<literal>'``) as the index definition in ``vectors``. They stay
lean: the query vector goes as pgvector's binary parameter, ``hnsw.ef_search`` is a session
setting re-sent only when it changes, and the images join happens only when asked for.
"""

from __future__ import annotations

import os
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg import pq, sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types import TypeInfo

from assemblage_assets.core import settings
from assemblage_assets.embeddings import text_calls, vectors
from resources.embedding.types import EmbedItem

DEFAULT_EF_SEARCH = 100  # see default_ef_search
EF_SEARCH_MAX = 1000  # pgvector's upper bound


class SearchError(ValueError):
    pass


def stored_models(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT m.model, m.provider, m.dim, m.source, m.index_name,
                  (SELECT count(*) FROM image_embeddings e WHERE e.model = m.model) AS vectors
           FROM embedding_models m ORDER BY m.created_at"""
    ).fetchall()


def pick_model(conn: psycopg.Connection, requested: str | None, active: str | None) -> dict[str, Any]:
    """``requested`` if given, else the active model if it has vectors, else the only stored one."""
    models = {m["model"]: m for m in stored_models(conn)}
    for name in (requested, active):
        if name and name in models:
            return models[name]
        if name and name == requested:
            raise SearchError(f"no vectors stored for model {name!r}; stored: {', '.join(models) or 'none'}")
    with_vectors = [m for m in models.values() if m["vectors"]]
    if len(with_vectors) == 1:
        return with_vectors[0]
    if not with_vectors:
        raise SearchError("no embeddings stored yet: run `assemblage embed` first")
    raise SearchError(f"several models have vectors ({', '.join(m['model'] for m in with_vectors)}): pass --model")


def default_ef_search() -> int:
    """``SEARCH_EF_SEARCH``: candidates the HNSW graph walk keeps. The default comes from the
    recall measurement of ``benchmarks/search.py`` (recall@10 >= 0.995 on 100,000 clustered
    768-d vectors), not from pgvector's 40."""
    return max(1, min(EF_SEARCH_MAX, settings.env_int("SEARCH_EF_SEARCH", DEFAULT_EF_SEARCH)))


def ef_search_for(k: int, ef_search: int | None = None) -> int:
    """The graph must keep at least the ``k`` results it is asked for."""
    return max(k, min(EF_SEARCH_MAX, ef_search or default_ef_search()))


_VECTOR_INFO: dict[tuple[str, str, str], TypeInfo] = {}
_PREPARED: weakref.WeakKeyDictionary[psycopg.Connection, int] = weakref.WeakKeyDictionary()


def prepare(conn: psycopg.Connection) -> None:
    """pgvector's psycopg adapter on ``conn`` (numpy vectors go as binary parameters). The type
    lookup is done once per database, not per connection."""
    if conn in _PREPARED:
        return
    key = (conn.info.host, str(conn.info.port), conn.info.dbname)
    info = _VECTOR_INFO.get(key)
    if info is None:
        info = _VECTOR_INFO[key] = TypeInfo.fetch(conn, "vector")
        if info is None:
            raise SearchError("the pgvector extension is not installed in this database")
    register_vector_info(conn, info)
    _PREPARED[conn] = 0  # ef_search of the session: 0 = not set yet


def set_ef_search(conn: psycopg.Connection, ef_search: int) -> None:
    """``hnsw.ef_search`` for the next queries on ``conn``: a session setting sent only when it
    changes (no transaction and no round trip per query); inside a transaction, ``SET LOCAL``."""
    prepare(conn)
    idle = conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE
    if idle and _PREPARED[conn] == ef_search:
        return
    scope = sql.SQL("SET" if idle else "SET LOCAL")
    conn.execute(sql.SQL("{} hnsw.ef_search = {}").format(scope, sql.Literal(int(ef_search))))
    if idle:
        _PREPARED[conn] = ef_search


def query_vector(model: dict[str, Any], vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != int(model["dim"]):
        raise SearchError(f"query vector has {vector.shape[0]} dimensions, model {model['model']} has {model['dim']}")
    return vector


def nearest(
    conn: psycopg.Connection, model: dict[str, Any], vector: np.ndarray, k: int = 10, exclude: str | None = None,
    *, ef_search: int | None = None, details: bool = True,
) -> list[dict[str, Any]]:
    """The ``k`` nearest images to ``vector`` among ``model``'s vectors, nearest first:
    ``image_id`` and ``distance``, plus path, URLs, keys and caption when ``details``."""
    dim = int(model["dim"])
    params = {"q": query_vector(model, vector), "k": k, "exclude": exclude}
    hits = sql.SQL(
        """SELECT e.image_id, e.embedding::vector({dim}) <=> %(q)b::vector({dim}) AS distance
           FROM image_embeddings e
           WHERE e.model = {model} AND (%(exclude)s::uuid IS NULL OR e.image_id <> %(exclude)s::uuid)
           ORDER BY e.embedding::vector({dim}) <=> %(q)b::vector({dim})
           LIMIT %(k)s"""
    ).format(dim=sql.Literal(dim), model=sql.Literal(model["model"]))
    if details:
        query = sql.SQL(
            """WITH hits AS ({hits})
               SELECT h.image_id::text AS image_id, h.distance::float AS distance,
                      (SELECT min(p.local_path) FROM processing_log p WHERE p.image_id = h.image_id) AS path,
                      i.thumbnail_url, i.preview_url, i.thumbnail_key, i.preview_key, i.caption
               FROM hits h JOIN images i ON i.id = h.image_id
               ORDER BY h.distance, h.image_id"""
        ).format(hits=hits)
    else:
        query = sql.SQL("SELECT h.image_id::text AS image_id, h.distance::float AS distance FROM ({hits}) h").format(hits=hits)
    set_ef_search(conn, ef_search_for(k, ef_search))
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def resolve_image(conn: psycopg.Connection, ref: str) -> str | None:
    """An image id from an id or the path of an ingested file (None when neither)."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    candidates = {ref, os.path.abspath(ref), str(Path(ref).expanduser().resolve())}
    row = conn.cursor(row_factory=tuple_row).execute(
        "SELECT image_id::text FROM processing_log WHERE local_path = ANY(%s) AND image_id IS NOT NULL LIMIT 1",
        (sorted(candidates),),
    ).fetchone()
    return row[0] if row else None


def search_text(
    conn: psycopg.Connection, provider: Any, model: dict[str, Any], text: str, k: int = 10, *, dsn: str = ""
) -> list[dict[str, Any]]:
    """Images nearest to a text. A paid provider's text embedding goes through the shared rate
    limit and is logged (``text_calls``; ``CallRefused`` when no slot comes in time)."""
    if provider is None or provider.model_id != model["model"]:
        raise SearchError(f"text search needs the provider of {model['model']!r} configured (EMBEDDING_PROVIDER)")
    vector = text_calls.embed_texts(conn, provider, [text], purpose="text", dsn=dsn)[0]
    return nearest(conn, model, vector, k)


def search_like(
    conn: psycopg.Connection, provider: Any, model: dict[str, Any], ref: str, k: int = 10, *, dsn: str = ""
) -> tuple[str | None, list[dict[str, Any]]]:
    """Images like an ingested image (its stored vector), or like any image file (embedded now
    with the provider, a paid call going through ``text_calls`` like a text query). Returns
    (image id or None, hits without the image itself)."""
    image_id = resolve_image(conn, ref)
    if image_id is not None:
        vector = vectors.stored_vector(conn, image_id, model["model"])
        if vector is not None:
            return image_id, nearest(conn, model, vector, k, exclude=image_id)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise SearchError(f"{ref!r} is neither an image id nor an ingested or existing image file")
    if provider is None or provider.model_id != model["model"]:
        raise SearchError(f"{ref} has no stored vector for {model['model']!r} and that provider is not configured")
    item = EmbedItem(image_id or "00000000-0000-0000-0000-000000000000", str(path.resolve()))
    outcome = text_calls.embed_image(conn, provider, item, purpose="search-upload", dsn=dsn)
    return image_id, nearest(conn, model, outcome.vector, k, exclude=image_id)

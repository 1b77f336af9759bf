"""``search.nearest`` stays lean (issue 13): the vector goes as pgvector's binary parameter,
``hnsw.ef_search`` is sent only when it changes, and the images join only when asked for."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector.psycopg.vector import VectorBinaryDumper
from psycopg.adapt import PyFormat

from assemblage_assets.core import db
from assemblage_assets.embeddings import search, vectors

MODEL, DIM, ROWS = "lean-test", 24, 300


class RecordingCursor(psycopg.Cursor):
    statements: list[str] = []

    def execute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN201 - psycopg's signature
        RecordingCursor.statements.append(query if isinstance(query, str) else query.as_string(self.connection))
        return super().execute(query, params, **kwargs)


@pytest.fixture
def loaded(pg_dsn: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(ROWS)]
    with db.connect(pg_dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY images (id, content_hash, bytes, width, height, format, original_ext, original_key) FROM STDIN") as copy:
            for image_id in ids:
                copy.write_row((image_id, image_id, 1, 1, 1, "JPEG", "jpg", "k"))
        vectors.ensure_model(conn, MODEL, "test", DIM)
        vectors.write_vectors(conn, MODEL, "test", ids, vecs)
    return vecs


def test_nearest_matches_exact_search_with_and_without_the_join(pg_dsn: str, loaded: np.ndarray) -> None:
    query = loaded[7] + 0.05
    exact = np.argsort(1 - loaded @ (query / np.linalg.norm(query)))[:10]
    with db.connect(pg_dsn) as conn:
        model = search.pick_model(conn, MODEL, None)
        lean = search.nearest(conn, model, query, k=10, ef_search=200, details=False)
        full = search.nearest(conn, model, query, k=10, ef_search=200)
    assert [int(h["image_id"][-12:]) for h in lean] == exact.tolist()
    assert set(lean[0]) == {"image_id", "distance"}
    assert [h["image_id"] for h in full] == [h["image_id"] for h in lean]
    assert {"path", "thumbnail_url", "caption"} <= set(full[0])
    assert full[0]["distance"] == pytest.approx(lean[0]["distance"])


def test_ef_search_is_sent_once_per_change_and_the_vector_in_binary(pg_dsn: str, loaded: np.ndarray) -> None:
    with db.connect(pg_dsn) as conn:
        model = search.pick_model(conn, MODEL, None)
        conn.cursor_factory = RecordingCursor
        RecordingCursor.statements.clear()

        def sent(**kw) -> list[str]:  # noqa: ANN003
            RecordingCursor.statements.clear()
            search.nearest(conn, model, loaded[1], k=5, details=False, **kw)
            return [s.split("\n")[0].strip() for s in RecordingCursor.statements]

        first = sent(ef_search=120)
        assert first[0] == "SET hnsw.ef_search = 120" and len(first) == 2
        assert sent(ef_search=120) == first[1:]  # no round trip for the setting
        assert sent(ef_search=300)[0] == "SET hnsw.ef_search = 300"
        assert conn.execute("SHOW hnsw.ef_search").fetchone()["hnsw.ef_search"] == "300"
        with conn.transaction():  # inside a transaction the setting must not outlive it
            assert sent(ef_search=50)[0] == "SET LOCAL hnsw.ef_search = 50"
        assert conn.execute("SHOW hnsw.ef_search").fetchone()["hnsw.ef_search"] == "300"
        assert sent(ef_search=300) == first[1:]
        # k above ef_search: the graph keeps at least k candidates
        RecordingCursor.statements.clear()
        search.nearest(conn, model, loaded[1], k=400, ef_search=10, details=False)
        assert RecordingCursor.statements[0] == "SET hnsw.ef_search = 400"
        text = RecordingCursor.statements[-1]
        assert "%(q)b" in text and "JOIN images" not in text
        assert isinstance(conn.adapters.get_dumper(np.ndarray, PyFormat.BINARY)(np.ndarray), VectorBinaryDumper)


def test_default_ef_search_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert search.default_ef_search() == search.DEFAULT_EF_SEARCH
    monkeypatch.setenv("SEARCH_EF_SEARCH", "64")
    assert search.default_ef_search() == 64 and search.ef_search_for(10) == 64 and search.ef_search_for(100) == 100
    monkeypatch.setenv("SEARCH_EF_SEARCH", "5000")
    assert search.default_ef_search() == search.EF_SEARCH_MAX

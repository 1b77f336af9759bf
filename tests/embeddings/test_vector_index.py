"""Bulk-load mode and the finalize step (``vector_index``): vectors stored without an index,
the HNSW index built once afterwards, recorded, used by search, the table vacuumed and
analyzed; reruns do nothing; an invalid index left by an interrupted build is rebuilt.
Against the real embedded Postgres, plus the Dagster asset/job and the CLI with the tiny CLIP."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import psycopg
import pytest
from support.embed_support import ingest, query, shard_resources, tiny_clip, write_tree

from assemblage_assets.core import db
from assemblage_assets.embeddings import index_build, search, vectors
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource

MODEL, DIM, ROWS = "bulk-test", 32, 3000


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1).standard_normal((50, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def load(conn: psycopg.Connection, n: int = ROWS) -> list[str]:
    """``n`` images and their vectors for MODEL, through ensure_model + write_vectors (the stage's path)."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with conn.cursor() as cur, cur.copy(
        "COPY images (id, content_hash, bytes, width, height, format, original_ext, original_key) FROM STDIN"
    ) as copy:
        for image_id in ids:
            copy.write_row((image_id, image_id, 1, 1, 1, "JPEG", "jpg", "k"))
    vectors.ensure_model(conn, MODEL, "test", DIM)
    vectors.write_vectors(conn, MODEL, "test", ids, clustered(n, 0))
    return ids


def hnsw_indexes(conn: psycopg.Connection) -> list[str]:
    return [r["indexname"] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'image_embeddings' AND indexdef LIKE '%USING hnsw%'")]


def model_row(conn: psycopg.Connection) -> dict:
    return conn.execute("SELECT * FROM embedding_models WHERE model = %s", (MODEL,)).fetchone()


def table_stats(conn: psycopg.Connection) -> dict:
    return conn.execute(
        "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = 'image_embeddings'").fetchone()


class ExplainingCursor(psycopg.Cursor):
    """Runs EXPLAIN before every nearest-neighbour query, so the test sees the plan of the
    exact SQL ``search.nearest`` sends."""

    plans: list[str] = []

    def execute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN201 - psycopg's signature
        text = query if isinstance(query, str) else query.as_string(self.connection)
        if "<=>" in text:
            super().execute("EXPLAIN " + text, params)
            ExplainingCursor.plans.append("\n".join(next(iter(r.values())) for r in self.fetchall()))
        return super().execute(query, params, **kwargs)


@pytest.fixture
def conn(pg_dsn: str):
    with db.connect(pg_dsn) as c:
        yield c


def test_bulk_mode_defers_the_index_and_finalize_builds_it_once(conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_DEFER_INDEX", "1")
    ids = load(conn)
    assert conn.execute("SELECT count(*) AS n FROM image_embeddings WHERE model = %s", (MODEL,)).fetchone()["n"] == ROWS
    assert hnsw_indexes(conn) == []
    row = model_row(conn)
    assert row["index_state"] == "deferred" and row["index_name"] is None

    # later runs in normal mode leave a deferred model alone: the finalize step builds it
    monkeypatch.delenv("EMBED_DEFER_INDEX")
    assert vectors.ensure_model(conn, MODEL, "test", DIM) is None
    assert hnsw_indexes(conn) == [] and model_row(conn)["index_state"] == "deferred"
    before = table_stats(conn)

    report = index_build.finalize(conn)
    (built,) = report.models
    name = vectors.index_name(MODEL)
    assert built.action == "built" and built.index_name == name and built.rows == ROWS
    assert (built.m, built.ef_construction) == (16, 64) and built.index_bytes > 0 and built.graph_fit_in_memory
    assert built.maintenance_work_mem == "64MB"  # the floor: 3,000 32-d vectors need ~2 MB
    assert report.vacuum_seconds is not None
    assert hnsw_indexes(conn) == [name] and index_build.index_status(conn, name) == "valid"
    row = model_row(conn)
    assert row["index_state"] == "ready" and row["index_name"] == name and row["index_build_seconds"] > 0
    assert row["index_params"]["m"] == 16 and row["index_params"]["rows"] == ROWS and row["index_params"]["concurrently"]
    stats = table_stats(conn)
    assert stats["last_vacuum"] is not None and stats["last_analyze"] is not None
    assert before["last_vacuum"] is None or stats["last_vacuum"] > before["last_vacuum"]

    # search uses the new index
    ExplainingCursor.plans.clear()
    conn.cursor_factory = ExplainingCursor
    hits = search.nearest(conn, search.pick_model(conn, MODEL, None), clustered(1, 5)[0], k=10)
    conn.cursor_factory = psycopg.Cursor
    assert len(hits) == 10 and {h["image_id"] for h in hits} <= set(ids)
    (plan,) = ExplainingCursor.plans
    assert f"Index Scan using {name}" in plan, plan

    # a second finalize only reports
    again = index_build.finalize(conn)
    assert [m.action for m in again.models] == ["ready"] and again.built == [] and again.vacuum_seconds is None
    assert table_stats(conn)["last_vacuum"] == stats["last_vacuum"]
    assert model_row(conn)["index_built_at"] == row["index_built_at"]


def test_normal_mode_still_indexes_on_first_use(conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBED_DEFER_INDEX", raising=False)
    load(conn, 100)
    assert hnsw_indexes(conn) == [vectors.index_name(MODEL)] and model_row(conn)["index_state"] == "ready"
    assert [m.action for m in index_build.finalize(conn).models] == ["ready"]


def test_invalid_index_from_an_interrupted_concurrent_build_is_rebuilt(pg_dsn: str, conn: psycopg.Connection,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_DEFER_INDEX", "1")
    load(conn)
    name = vectors.index_name(MODEL)
    # A writer's open transaction makes CREATE INDEX CONCURRENTLY wait after it has created the
    # (not yet valid) index; the lock timeout then aborts it, as a crash or cancel would.
    with psycopg.connect(pg_dsn) as writer:
        writer.execute("DELETE FROM image_embeddings WHERE image_id = (SELECT image_id FROM image_embeddings LIMIT 1)")
        conn.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(vectors.index_ddl(MODEL, DIM, name, concurrently=True))
        conn.execute("RESET lock_timeout")
        writer.rollback()
    assert index_build.index_status(conn, name) == "invalid"

    report = index_build.finalize(conn, MODEL)
    assert [m.action for m in report.models] == ["rebuilt"] and report.vacuum_seconds is not None
    assert index_build.index_status(conn, name) == "valid" and hnsw_indexes(conn) == [name]
    assert model_row(conn)["index_state"] == "ready"


def test_memory_plan_sizes_to_the_graph_and_caps(conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    assert index_build.parse_memory_kb("2GB") == 2 * 1024**2 and index_build.parse_memory_kb("512MB") == 512 * 1024
    with pytest.raises(ValueError):
        index_build.parse_memory_kb("lots")
    plan = index_build.plan_build(conn, 1_000_000, 768, 16)
    assert plan.maintenance_work_mem_kb >= index_build.graph_bytes(1_000_000, 768, 16) // 1024 or plan.notes
    monkeypatch.setenv("INDEX_MAINTENANCE_WORK_MEM", "100TB")
    monkeypatch.setenv("INDEX_PARALLEL_WORKERS", "3")
    capped = index_build.plan_build(conn, 1000, 768, 16)
    assert capped.maintenance_work_mem_kb < 100 * 1024**3 and any("capped" in n for n in capped.notes)


# --------------------------------------------------------------------------- Dagster and CLI


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("models"))


def test_embeddings_in_bulk_mode_then_vector_index_asset_and_cli(
    tmp_path: Path, assemblage_env: dict[str, str], pg_dsn: str, tiny: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EMBEDDING_PROVIDER", "local_clip")
    monkeypatch.setenv("CLIP_MODEL", str(tiny))
    monkeypatch.setenv("EMBED_DEFER_INDEX", "1")
    from assemblage_assets.definitions import defs
    from assemblage_assets.embeddings.assets import embeddings
    from assemblage_assets.embeddings.assets import vector_index as vector_index_asset

    images = write_tree(tmp_path / "src", {"cars": ["orange", "blue"], "parks": ["green"]})
    cache = tmp_path / "cache"
    shards = ingest(pg_dsn, images, cache)
    resources = shard_resources(pg_dsn, images, cache, tiny)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, shards)
        for shard in shards:
            assert dg.materialize([embeddings], partition_key=shard, instance=instance, resources=resources).success
        assert query(pg_dsn, "SELECT index_state FROM embedding_models") == [{"index_state": "deferred"}]
        with db.connect(pg_dsn) as c:
            assert hnsw_indexes(c) == []

        job = defs.resolve_job_def("finalize_index_job")
        assert job.asset_layer.executable_asset_keys == {dg.AssetKey("vector_index")}
        result = job.execute_in_process(instance=instance, resources={"database": PostgresResource(dsn=pg_dsn)})
        assert result.success
        meta = result.asset_materializations_for_node("vector_index")[0].metadata
        assert meta["built"].value == 1 and meta["model"].value == "tiny-clip" and meta["rows"].value == 3
        assert meta["index_bytes"].value > 0 and meta["m"].value == 16 and meta["ef_construction"].value == 64
        assert "vacuum_analyze_seconds" in meta
        (row,) = query(pg_dsn, "SELECT index_state, index_name FROM embedding_models")
        assert row["index_state"] == "ready" and row["index_name"] == vectors.index_name("tiny-clip")

        again = dg.materialize([vector_index_asset], instance=instance, resources={"database": PostgresResource(dsn=pg_dsn)})
        meta = again.asset_materializations_for_node("vector_index")[0].metadata
        assert meta["built"].value == 0 and meta["models"].value[0]["action"] == "ready"

    # the CLI launches the same job in the instance of DAGSTER_HOME: nothing left to build
    from assemblage_assets.cli import main

    assert main(["index", "build"]) == 0
    assert "tiny-clip: ready" in capsys.readouterr().out
    assert main(["index", "status"]) == 0
    assert "index ready" in capsys.readouterr().out

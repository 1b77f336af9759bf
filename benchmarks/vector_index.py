"""HNSW index at scale: bulk load + one index build (the finalize step) vs inserting into an
index that is already there, for 768-d vectors in the embedded Postgres (pgvector 0.6.2).

    bulk         ``vectors.write_vectors`` in 50,000-row COPYs into a model registered in
                 bulk-load mode (no index), then ``index_build.finalize`` (CREATE INDEX
                 CONCURRENTLY with maintenance_work_mem sized to the graph and cores - 1 parallel
                 workers), then its VACUUM ANALYZE: each timed
    incremental  the index exists before the inserts, which go in batches of EMBED_BATCH_SIZE (32)
                 through ``write_vectors``, as the embeddings stage writes them. Measured in full
                 at 100k (with the rate of the last 5% reported too, to check the extrapolation);
                 at 1M only a slice is measured (``--slice`` rows inserted into the finished
                 1M index) and the full load is extrapolated from its per-row rate: an upper-ish
                 estimate, since earlier rows go into a smaller graph
    memory       (100k) the same build with maintenance_work_mem too small for the graph (pgvector
                 then finishes on disk), serially (0 workers) and as a plain (blocking) CREATE
                 INDEX, against the sized parallel CONCURRENTLY build
    recall       recall@10 of the index against exact search on 200 queries, at hnsw.ef_search 40
                 (default) and 100; index size on disk

Vectors: unit vectors drawn around 3,000 random centres on the sphere (cosine ~0.8 to their
centre), like image embeddings, which crowd around subjects. Uniform random vectors in 768-d
are the worst case for HNSW (every point nearly equidistant from every other) and would
understate recall and overstate build work.

Everything runs against a throwaway embedded Postgres under --workdir; nothing leaves 127.0.0.1.
Disk: 1M x 768 x 4 B is ~3 GB of table plus ~4 GB of index and WAL.

    .venv/bin/python benchmarks/vector_index.py --rows 100000 [--out result.json]
    .venv/bin/python benchmarks/vector_index.py --rows 1000000 --slice 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM = 768
CLUSTERS = 3000
CHUNK = 50_000
BATCH = 32
QUERIES = 200
MODEL = "bench-clip-768"


def centres(dim: int = DIM) -> np.ndarray:
    c = np.random.default_rng(12345).standard_normal((CLUSTERS, dim), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def clustered(n: int, seed: int, cents: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = cents[rng.integers(0, len(cents), n)] + 0.75 * rng.standard_normal((n, cents.shape[1]), dtype=np.float32) / np.sqrt(cents.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunks(rows: int, cents: np.ndarray, seed: int = 0):
    """Deterministic chunks (regenerated instead of holding 3 GB for the exact search)."""
    for start in range(0, rows, CHUNK):
        yield start, clustered(min(CHUNK, rows - start), seed * 1_000_003 + start, cents)


def add_images(conn, ids: list[str]) -> None:
    with conn.cursor() as cur, cur.copy(
        "COPY images (id, content_hash, bytes, width, height, format, original_ext, original_key) FROM STDIN"
    ) as copy:
        for image_id in ids:
            copy.write_row((image_id, image_id, 1, 1, 1, "JPEG", "jpg", "k"))


def new_database(server_dsn: str, name: str) -> str:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from assemblage_assets.core import db

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(server_dsn, dbname=name)
    db.migrate(dsn)
    return dsn


def exact_top(rows: int, cents: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Row numbers of the exact k nearest (cosine) per query, streaming over the chunks."""
    best_sim = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_idx = np.zeros((len(queries), k), dtype=np.int64)
    for start, vecs in chunks(rows, cents):
        sims = queries @ vecs.T
        idx = np.argpartition(-sims, k, axis=1)[:, :k]
        cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, idx, axis=1)], axis=1)
        cand_idx = np.concatenate([best_idx, idx + start], axis=1)
        order = np.argsort(-cand_sim, axis=1)[:, :k]
        best_sim, best_idx = np.take_along_axis(cand_sim, order, axis=1), np.take_along_axis(cand_idx, order, axis=1)
    return best_idx


def recall(conn, ids: list[str], truth: np.ndarray, queries: np.ndarray, ef: int, k: int = 10) -> dict:
    query = (f"SELECT image_id::text FROM image_embeddings WHERE model = '{MODEL}' "
             f"ORDER BY embedding::vector({DIM}) <=> %s::vector({DIM}) LIMIT {k}")
    hits, seconds = 0, 0.0
    with conn.transaction():
        conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute("EXPLAIN " + query, (str(queries[0].tolist()),)).fetchall())
        for q, true in zip(queries, truth, strict=True):
            t0 = time.perf_counter()
            got = {r["image_id"] for r in conn.execute(query, (str(q.tolist()),)).fetchall()}
            seconds += time.perf_counter() - t0
            hits += len(got & {ids[i] for i in true})
    return {"ef_search": ef, "recall_at_10": round(hits / (k * len(queries)), 4),
            "ms_per_query": round(1000 * seconds / len(queries), 2), "index_scan": "Index Scan" in plan}


def bulk(server_dsn: str, rows: int, cents: np.ndarray, ids: list[str]) -> tuple[str, dict]:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import index_build as vector_index
    from assemblage_assets.embeddings import vectors

    dsn = new_database(server_dsn, "bulk")
    with db.connect(dsn) as conn:
        add_images(conn, ids)
        vectors.ensure_model(conn, MODEL, "bench", DIM, defer=True)
        t0 = time.perf_counter()
        for start, vecs in chunks(rows, cents):
            vectors.write_vectors(conn, MODEL, "bench", ids[start : start + len(vecs)], vecs)
        load = time.perf_counter() - t0
        print(f"bulk: {rows} rows loaded in {load:.1f} s", flush=True)
        report = vector_index.finalize(conn, log=lambda m: print("  " + m, flush=True))
        built = report.models[0]
        table = conn.execute("SELECT pg_total_relation_size('image_embeddings') AS n").fetchone()["n"]
    return dsn, {
        "load_seconds": round(load, 1), "build_seconds": built.build_seconds, "vacuum_analyze_seconds": report.vacuum_seconds,
        "total_seconds": round(load + built.build_seconds + report.vacuum_seconds, 1),
        "index_mb": round(built.index_bytes / 2**20, 1), "table_mb": round(table / 2**20, 1),
        "maintenance_work_mem": built.maintenance_work_mem, "workers": built.workers, "m": built.m,
        "ef_construction": built.ef_construction, "graph_fit_in_memory": built.graph_fit_in_memory, "notes": built.notes,
    }


def insert_batches(conn, ids: list[str], vecs: np.ndarray) -> float:
    from assemblage_assets.embeddings import vectors

    t0 = time.perf_counter()
    for i in range(0, len(ids), BATCH):
        vectors.write_vectors(conn, MODEL, "bench", ids[i : i + BATCH], vecs[i : i + BATCH])
    return time.perf_counter() - t0


def incremental_full(server_dsn: str, rows: int, cents: np.ndarray, ids: list[str]) -> dict:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import vectors

    dsn = new_database(server_dsn, "incremental")
    tail = max(BATCH, rows // 20)
    with db.connect(dsn) as conn:
        add_images(conn, ids)
        vectors.ensure_model(conn, MODEL, "bench", DIM, defer=False)  # empty index first
        seconds = tail_seconds = 0.0
        for start, vecs in chunks(rows, cents):
            part = ids[start : start + len(vecs)]
            cut = max(0, rows - tail - start)
            seconds += insert_batches(conn, part[:cut], vecs[:cut])
            if cut < len(part):
                t = insert_batches(conn, part[cut:], vecs[cut:])
                seconds += t
                tail_seconds += t
            print(f"incremental: {start + len(vecs)} rows, {seconds:.0f} s", flush=True)
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE image_embeddings")
        vacuum = time.perf_counter() - t0
    return {"insert_seconds": round(seconds, 1), "vacuum_analyze_seconds": round(vacuum, 1),
            "total_seconds": round(seconds + vacuum, 1), "rows_per_s": round(rows / seconds, 1),
            f"last_{tail}_rows_per_s": round(tail / tail_seconds, 1),
            "extrapolated_from_last_slice_seconds": round(rows * tail_seconds / tail, 1)}


def incremental_slice(dsn: str, rows: int, slice_rows: int, cents: np.ndarray) -> dict:
    """``slice_rows`` more rows into the finished ``rows``-row index; extrapolate to ``rows``."""
    from assemblage_assets.core import db

    extra = [str(uuid.uuid4()) for _ in range(slice_rows)]
    vecs = clustered(slice_rows, 777, cents)
    with db.connect(dsn) as conn:
        add_images(conn, extra)
        seconds = insert_batches(conn, extra, vecs)
    return {"slice_rows": slice_rows, "into_index_of": rows, "slice_seconds": round(seconds, 1),
            "rows_per_s": round(slice_rows / seconds, 1),
            "extrapolated_seconds": round(rows * seconds / slice_rows, 1)}


def rebuild(dsn: str, label: str, env: dict[str, str], concurrently: bool = True) -> dict:
    """Drop the bulk index and build again through finalize with ``env`` set."""
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import index_build as vector_index
    from assemblage_assets.embeddings import vectors

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with db.connect(dsn) as conn:
            conn.execute(f'DROP INDEX IF EXISTS "{vectors.index_name(MODEL)}"')
            conn.execute("UPDATE embedding_models SET index_state = 'deferred', index_name = NULL")
            built = vector_index.finalize(conn, concurrently=concurrently).models[0]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    print(f"{label}: {built.build_seconds:.1f} s ({built.maintenance_work_mem}, {built.workers} workers, "
          f"fit {built.graph_fit_in_memory})", flush=True)
    return {"build_seconds": built.build_seconds, "maintenance_work_mem": built.maintenance_work_mem,
            "workers": built.workers, "graph_fit_in_memory": built.graph_fit_in_memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--slice", type=int, default=0, help="measure incremental on a slice only (default: in full up to 200k)")
    parser.add_argument("--small-mem", default="64MB", help="maintenance_work_mem too small for the graph (100k: ~380 MB)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory/workers/blocking variants")
    parser.add_argument("--skip-incremental", action="store_true", help="bulk, recall and build variants only")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from assemblage_assets.core import db

    work = args.workdir or Path(tempfile.mkdtemp(prefix="hnsw-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    pgdata = work / "pgdata"
    server = db.start_embedded(pgdata)
    cents = centres()
    ids = [str(uuid.uuid4()) for _ in range(args.rows)]
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": args.rows, "dim": DIM,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GB RAM",
        "dev_shm_free_gb": round(shutil.disk_usage("/dev/shm").free / 2**30, 1),
    }
    try:
        bulk_dsn, result["bulk"] = bulk(server, args.rows, cents, ids)
        print(json.dumps(result["bulk"]), flush=True)
        queries = clustered(QUERIES, 99, cents)
        truth = exact_top(args.rows, cents, queries)
        with db.connect(bulk_dsn) as conn:
            result["recall"] = [recall(conn, ids, truth, queries, ef) for ef in (40, 100)]
        print(json.dumps(result["recall"]), flush=True)
        if not args.no_memory and args.rows <= 200_000:
            result["memory"] = {
                "small_mem": rebuild(bulk_dsn, "small maintenance_work_mem", {"INDEX_MAINTENANCE_WORK_MEM": args.small_mem}),
                "serial": rebuild(bulk_dsn, "serial build", {"INDEX_PARALLEL_WORKERS": "0"}),
                "sized_parallel": rebuild(bulk_dsn, "sized parallel build", {}),
                "blocking": rebuild(bulk_dsn, "plain CREATE INDEX (not CONCURRENTLY)", {}, concurrently=False),
            }
            m = result["memory"]
            m["small_mem_vs_sized"] = round(m["small_mem"]["build_seconds"] / m["sized_parallel"]["build_seconds"], 2)
            m["serial_vs_parallel"] = round(m["serial"]["build_seconds"] / m["sized_parallel"]["build_seconds"], 2)
            m["concurrently_vs_blocking"] = round(m["sized_parallel"]["build_seconds"] / m["blocking"]["build_seconds"], 2)
        if not args.skip_incremental:
            if args.slice:
                inc = result["incremental"] = incremental_slice(bulk_dsn, args.rows, args.slice, cents)
                inc_total = inc["extrapolated_seconds"]
            else:
                inc = result["incremental"] = incremental_full(server, args.rows, cents, ids)
                inc_total = inc["total_seconds"]
            print(json.dumps(inc), flush=True)
            b = result["bulk"]
            result["ratios"] = {
                "incremental_vs_bulk_total": round(inc_total / b["total_seconds"], 2),
                "incremental_vs_bulk_build_only": round(inc_total / b["build_seconds"], 2),
            }
    finally:
        db.stop_embedded(pgdata)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Vector column storage: ``EXTERNAL`` (before migration 0011, two TOAST chunks per 768-d vector)
against ``PLAIN``, ``MAIN`` and ``MAIN@8160`` (MAIN with ``toast_tuple_target`` 8160, what
0011 sets: no compression attempt below a page), and what migration 0011's rewrite costs.

For each storage: binary COPY of N 768-d vectors in EMBED_BATCH_SIZE batches (the stage's
pattern, ``vectors.write_vectors``), then the table's heap, TOAST and total size. Then the
migration itself: N rows written under EXTERNAL, 0011 applied, time and sizes after.
Ratios are against EXTERNAL measured in the same run. Throwaway embedded Postgres, 127.0.0.1 only.

    .venv/bin/python benchmarks/vector_storage.py [--rows 20000] [--batch 32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assemblage_assets.core import db  # noqa: E402
from assemblage_assets.embeddings import vectors  # noqa: E402

DIM = 768


def sizes(conn) -> dict:
    row = conn.execute(
        """SELECT pg_relation_size('image_embeddings'), coalesce(pg_total_relation_size(reltoastrelid), 0),
                  pg_total_relation_size('image_embeddings')
           FROM pg_class WHERE relname = 'image_embeddings'""").fetchone()
    return {"heap_mb": row[0] / 2**20, "toast_mb": row[1] / 2**20, "total_mb": row[2] / 2**20}


def fresh(server: str, name: str, upto: str | None = None) -> str:
    from psycopg.conninfo import make_conninfo

    with db.open_connection(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(server, dbname=name)
    if upto is None:
        db.migrate(dsn)
    else:  # the schema as it was before a migration: apply only the files up to it
        tmp = Path(tempfile.mkdtemp())
        for f in sorted(db.SQL_DIR.glob("*.sql")):
            if f.name < upto:
                shutil.copy(f, tmp / f.name)
        db.migrate(dsn, tmp)
        shutil.rmtree(tmp)
    return dsn


def load(dsn: str, rows: int, batch: int, storage: str | None) -> tuple[float, list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(rows)]
    vecs = np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with db.open_connection(dsn) as conn:
        if storage:
            kind, _, target = storage.partition("@")
            conn.execute("ALTER TABLE image_embeddings RESET (toast_tuple_target)")  # 0011 sets it
            conn.execute(f"ALTER TABLE image_embeddings ALTER COLUMN embedding SET STORAGE {kind}")
            if target:
                conn.execute(f"ALTER TABLE image_embeddings SET (toast_tuple_target = {int(target)})")
        with conn.cursor() as cur, cur.copy(
            "COPY images (id, content_hash, bytes, width, height, format, original_ext, original_key) FROM STDIN"
        ) as copy:
            for i in ids:
                copy.write_row((i, i, 1, 1, 1, "JPEG", "jpg", "k"))
        conn.commit()
        started = time.perf_counter()
        for i in range(0, rows, batch):
            vectors.write_vectors(conn, "bench", "local_clip", ids[i : i + batch], vecs[i : i + batch])
            conn.commit()
        seconds = time.perf_counter() - started
    return seconds, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vector-storage-"))
    server = db.start_embedded(work / "pgdata")
    try:
        results: dict[str, dict] = {}
        storages = ("EXTERNAL", "PLAIN", "MAIN", "MAIN@8160")
        for _ in range(args.repeat):  # interleaved rounds, best of each: noise never adds speed
            for storage in storages:
                dsn = fresh(server, f"s_{storage.lower().replace('@', '_')}")
                seconds, _ = load(dsn, args.rows, args.batch, storage)
                with db.open_connection(dsn) as conn:
                    row = {"rows_per_s": args.rows / seconds, **sizes(conn)}
                if storage not in results or row["rows_per_s"] > results[storage]["rows_per_s"]:
                    results[storage] = row
        for storage in storages:
            r = results[storage]
            print(f"{storage:9s} COPY {r['rows_per_s']:9,.0f} rows/s ({r['rows_per_s'] / results['EXTERNAL']['rows_per_s']:.2f}x) "
                  f"heap {r['heap_mb']:7.1f} MB  toast {r['toast_mb']:7.1f} MB  total {r['total_mb']:7.1f} MB")
        dsn = fresh(server, "s_migrate", upto="0011")
        load(dsn, args.rows, args.batch, None)
        with db.open_connection(dsn) as conn:
            before = sizes(conn)
        started = time.perf_counter()
        db.migrate(dsn)
        seconds = time.perf_counter() - started
        with db.open_connection(dsn) as conn:
            after = sizes(conn)
            storage = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'image_embeddings'::regclass "
                                   "AND attname = 'embedding'").fetchone()[0]
        print(f"migration 0011 over {args.rows:,} rows: {seconds:.2f}s ({args.rows / seconds:,.0f} rows/s), "
              f"total {before['total_mb']:.1f} -> {after['total_mb']:.1f} MB "
              f"(toast {before['toast_mb']:.1f} -> {after['toast_mb']:.1f} MB), attstorage now {storage!r}")
    finally:
        db.stop_embedded(work / "pgdata")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

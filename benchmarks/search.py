"""Search on 100,000 synthetic 768-d vectors in the embedded Postgres (pgvector 0.6.2).

    recall   recall@10 of the HNSW index against exact search (numpy, streamed), 200 queries,
             at several hnsw.ef_search values, with ms/query, and the smallest value reaching
             recall@10 >= 0.995 (SEARCH_EF_SEARCH's default is chosen from it, docs/benchmarks.md)
    nearest  ``search.nearest`` (no join: what the API's vector list calls) against the bare
             HNSW query (the same SQL typed out, binary vector parameter, ef_search set once on
             the session), and against the previous implementation (text literal, a transaction
             with SET LOCAL per call, the images join) for the record; interleaved, p50/p95
    api      text search through ``GET /api/search`` (uvicorn in a separate process, HTTP
             keep-alive from this one) against the same work done directly: the text embedding
             with the same model, then the same three ranked-list queries and the card query
             on one psycopg connection; p50/p95

The vectors are clustered like image embeddings (``vector_index.py``: 3,000 centres, cosine
~0.8 to the centre). Captions (a few words from a small vocabulary) and one tag per image give
the full-text and tag lists real work. The text model is a random CLIP with a 768-d projection
built here (its vectors carry no meaning; the timing of the query path is what is measured).
Everything runs on 127.0.0.1 in a throwaway workdir.

    .venv/bin/python benchmarks/search.py [--rows 100000] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vector_index  # noqa: E402
from vector_index import DIM, QUERIES, add_images, centres, chunks, clustered, exact_top, new_database  # noqa: E402

MODEL = "bench-clip-768"
# 1,000 clusters of ~100 vectors: a query's true top 10 sits among 100 close neighbours, so the
# graph search has to work for it (vector_index.py's 3,000 clusters of ~33 give 1.000 at any
# ef_search and cannot choose a default; 100 clusters of ~1,000 give 0.975 at 200)
CLUSTERS = 1000
EF_VALUES = (40, 64, 100, 150, 200, 300, 400)
TIMED = 300
WORDS = ("orange", "car", "street", "cobblestones", "bicycle", "rain", "sunset", "harbour", "boat", "market",
         "church", "mountain", "lake", "dog", "portrait", "night", "bridge", "train", "snow", "garden")
TEXTS = [f"{a} {b}" for a in WORDS[:10] for b in WORDS[10:]]


def pct(values: list[float], p: float) -> float:
    return round(float(np.percentile(values, p)) * 1000, 3)


def summary(values: list[float]) -> dict:
    return {"p50_ms": pct(values, 50), "p95_ms": pct(values, 95), "mean_ms": round(statistics.mean(values) * 1000, 3)}


def tiny_768(dest: Path) -> Path:
    from assemblage_assets.dev import tiny_clip

    tiny_clip.PRESETS["bench-768"] = {**tiny_clip.PRESETS["tiny"], "projection_dim": DIM}
    return tiny_clip.build_clip_checkpoint(dest / MODEL, "bench-768", seed=0)


def load(server: str, rows: int, cents: np.ndarray, ids: list[str], source: Path) -> tuple[str, dict]:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import index_build, vectors

    dsn = new_database(server, "search")
    with db.connect(dsn) as conn:
        t0 = time.perf_counter()
        add_images(conn, ids)
        vectors.ensure_model(conn, MODEL, "local_clip", DIM, str(source), defer=True)
        for start, vecs in chunks(rows, cents):
            vectors.write_vectors(conn, MODEL, "local_clip", ids[start : start + len(vecs)], vecs)
        words = "(ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "])"
        conn.execute(f"""UPDATE images SET caption = {words}[1 + floor(random() * {len(WORDS)})::int] || ' ' ||
                                                   {words}[1 + floor(random() * {len(WORDS)})::int] || ' ' ||
                                                   {words}[1 + floor(random() * {len(WORDS)})::int]""")
        conn.execute(f"""INSERT INTO image_tags (image_id, tag, confidence, model)
                         SELECT id, {words}[1 + floor(random() * {len(WORDS)})::int], random(), '{MODEL}' FROM images""")
        loaded = time.perf_counter() - t0
        report = index_build.finalize(conn)
        conn.execute("VACUUM ANALYZE images")
        conn.execute("VACUUM ANALYZE image_tags")
    return dsn, {"load_seconds": round(loaded, 1), "index_build_seconds": report.models[0].build_seconds}


def recall(dsn: str, ids: list[str], truth: np.ndarray, queries: np.ndarray) -> list[dict]:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import search

    out = []
    with db.connect(dsn) as conn:
        model = search.pick_model(conn, MODEL, None)
        for ef in EF_VALUES:
            hits, seconds = 0, []
            for q, true in zip(queries, truth, strict=True):
                t0 = time.perf_counter()
                got = search.nearest(conn, model, q, k=10, ef_search=ef, details=False)
                seconds.append(time.perf_counter() - t0)
                hits += len({h["image_id"] for h in got} & {ids[i] for i in true})
            out.append({"ef_search": ef, "recall_at_10": round(hits / (10 * len(queries)), 4), **summary(seconds)})
            print(json.dumps(out[-1]), flush=True)
    return out


def previous_nearest(conn, model: dict, vector: np.ndarray, k: int) -> list:  # noqa: ANN001
    """``search.nearest`` before issue 13: text literal, SET LOCAL in a transaction, the join."""
    from psycopg import sql
    from psycopg.rows import dict_row

    literal = "[" + ",".join(repr(float(x)) for x in vector) + "]"
    query = sql.SQL(
        """WITH hits AS (
               SELECT e.image_id, e.embedding::vector({dim}) <=> %(q)s::vector({dim}) AS distance
               FROM image_embeddings e WHERE e.model = {model} AND (%(exclude)s::uuid IS NULL OR e.image_id <> %(exclude)s::uuid)
               ORDER BY e.embedding::vector({dim}) <=> %(q)s::vector({dim}) LIMIT %(k)s)
           SELECT h.image_id::text AS image_id, h.distance::float AS distance,
                  (SELECT min(p.local_path) FROM processing_log p WHERE p.image_id = h.image_id) AS path,
                  i.thumbnail_url, i.preview_url, i.thumbnail_key, i.preview_key, i.caption
           FROM hits h JOIN images i ON i.id = h.image_id ORDER BY h.distance, h.image_id"""
    ).format(dim=sql.Literal(DIM), model=sql.Literal(model["model"]))
    with conn.transaction():
        conn.execute("SET LOCAL hnsw.ef_search = 100")
        return conn.cursor(row_factory=dict_row).execute(query, {"q": literal, "k": k, "exclude": None}).fetchall()


def nearest_vs_bare(dsn: str, queries: np.ndarray, ef: int) -> dict:
    import psycopg
    from psycopg.rows import tuple_row

    from assemblage_assets.core import db
    from assemblage_assets.embeddings import search

    bare_sql = (f"SELECT image_id::text, embedding::vector({DIM}) <=> %(q)b::vector({DIM}) FROM image_embeddings "
                f"WHERE model = '{MODEL}' ORDER BY embedding::vector({DIM}) <=> %(q)b::vector({DIM}) LIMIT 10")
    with db.connect(dsn) as conn, psycopg.connect(dsn, autocommit=True) as bare:
        search.prepare(bare)
        bare.execute(f"SET hnsw.ef_search = {ef}")
        cur = bare.cursor(row_factory=tuple_row)
        model = search.pick_model(conn, MODEL, None)
        runs: dict[str, list[float]] = {"bare": [], "nearest": [], "nearest_details": [], "previous": []}
        calls = {
            "bare": lambda q: cur.execute(bare_sql, {"q": q}).fetchall(),
            "nearest": lambda q: search.nearest(conn, model, q, 10, ef_search=ef, details=False),
            "nearest_details": lambda q: search.nearest(conn, model, q, 10, ef_search=ef),
            "previous": lambda q: previous_nearest(conn, model, q, 10),
        }
        for call in calls.values():  # warm-up
            for q in queries[:20]:
                call(q)
        order = list(calls)
        for i in range(TIMED):
            q = queries[i % len(queries)]
            order = order[1:] + order[:1]  # no variant always first on a query (cold pages)
            for name in order:
                t0 = time.perf_counter()
                calls[name](q)
                runs[name].append(time.perf_counter() - t0)
    out = {name: summary(values) for name, values in runs.items()}
    out["nearest_vs_bare_p50"] = round(out["nearest"]["p50_ms"] / out["bare"]["p50_ms"], 3)
    out["nearest_details_vs_bare_p50"] = round(out["nearest_details"]["p50_ms"] / out["bare"]["p50_ms"], 3)
    out["previous_vs_bare_p50"] = round(out["previous"]["p50_ms"] / out["bare"]["p50_ms"], 3)
    return out


def serve(dsn: str, port: int) -> None:
    """``--serve``: the app under uvicorn, as ``assemblage serve`` runs it (another process)."""
    import uvicorn

    from assemblage_assets.serve import server

    app = server.build(dsn)
    print(app.state.service.warm(), flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def api_vs_direct(dsn: str, source: Path, ef: int) -> dict:
    import httpx

    from assemblage_assets.core import db
    from assemblage_assets.embeddings import search
    from assemblage_assets.serve import queries
    from assemblage_assets.serve.queries import Filters
    from assemblage_assets.serve.service import FUSION_WINDOW, fuse, query_tags
    from resources.embedding import LocalClipEmbedding

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.serve_support import free_port

    port = free_port()
    # one torch thread on both sides: a single short text gains nothing from intra-op threads,
    # and on a shared 2-core machine two threads per process mostly wait for each other
    env = {**os.environ, "SERVE_RATE_LIMIT": "0", "SEARCH_EF_SEARCH": str(ef), "OMP_NUM_THREADS": "1"}
    import torch

    torch.set_num_threads(1)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", dsn, str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the API did not start")
                time.sleep(0.2)
            provider = LocalClipEmbedding(clip_model=str(source))
            provider.load()
            with db.connect(dsn) as conn:
                search.prepare(conn)
                model = search.pick_model(conn, MODEL, None)

                def direct(text: str, vector: np.ndarray | None = None) -> int:
                    if vector is None:
                        vector = provider.embed_texts([text])[0][0]
                    f = Filters()
                    lists = {"vector": queries.vector_hits(conn, model, vector, FUSION_WINDOW, f, ef_search=ef),
                             "caption": queries.caption_hits(conn, text, FUSION_WINDOW, f),
                             "tags": queries.tag_hits(conn, query_tags(text), FUSION_WINDOW, f)}
                    fused = fuse({n: [r["image_id"] for r in rows] for n, rows in lists.items()})[:24]
                    return len(queries.cards(conn, [i for i, _, _ in fused]))

                def api(text: str) -> int:
                    response = client.get("/api/search", params={"q": text, "limit": 24})
                    response.raise_for_status()
                    return len(response.json()["items"])

                client.timeout = httpx.Timeout(600)  # the first search may still be loading the model
                for text in TEXTS[:20]:
                    assert api(text) == direct(text) == 24
                client.timeout = httpx.Timeout(60)
                text_vectors = {t: provider.embed_texts([t])[0][0] for t in TEXTS}

                def sql_only(text: str) -> int:  # the same SQL with the text's vector at hand
                    return direct(text, text_vectors[text])

                runs: dict[str, list[float]] = {"api": [], "direct": [], "sql_only": []}
                calls = {"api": api, "direct": direct, "sql_only": sql_only}
                order = list(calls)
                for i in range(TIMED):
                    text = TEXTS[i % len(TEXTS)]
                    order = order[1:] + order[:1]
                    for name in order:
                        t0 = time.perf_counter()
                        calls[name](text)
                        runs[name].append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {name: summary(values) for name, values in runs.items()}
    out["api_vs_direct_p50"] = round(out["api"]["p50_ms"] / out["direct"]["p50_ms"], 3)
    out["api_vs_direct_p95"] = round(out["api"]["p95_ms"] / out["direct"]["p95_ms"], 3)
    out["api_vs_sql_only_p50"] = round(out["api"]["p50_ms"] / out["sql_only"]["p50_ms"], 3)
    return out


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from assemblage_assets.core import db

    work = args.workdir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    pgdata = work / "pgdata"
    server = db.start_embedded(pgdata)
    vector_index.CLUSTERS = CLUSTERS  # centres() and the chunks read it
    cents = centres()
    ids = [str(uuid.UUID(int=i + 1)) for i in range(args.rows)]
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": args.rows, "dim": DIM,
                    "machine": f"{os.cpu_count()} cores"}
    try:
        source = tiny_768(work / "models")
        dsn, result["load"] = load(server, args.rows, cents, ids, source)
        print(json.dumps(result["load"]), flush=True)
        queries = clustered(QUERIES, 99, cents)
        result["recall"] = recall(dsn, ids, exact_top(args.rows, cents, queries), queries)
        chosen = next((r["ef_search"] for r in result["recall"] if r["recall_at_10"] >= 0.995), EF_VALUES[-1])
        result["smallest_ef_search_at_0995"] = chosen
        result["nearest"] = nearest_vs_bare(dsn, queries, chosen)
        print(json.dumps(result["nearest"]), flush=True)
        result["api"] = api_vs_direct(dsn, source, chosen)
        print(json.dumps(result["api"]), flush=True)
    finally:
        db.stop_embedded(pgdata)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

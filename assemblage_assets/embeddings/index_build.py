"""Finalize step of a bulk load: build each model's HNSW index once, then VACUUM ANALYZE.

In bulk-load mode (``EMBED_DEFER_INDEX=1``) the embeddings stage stores vectors without an
index (``embedding_models.index_state = 'deferred'``): inserting into an HNSW index walks the
graph for every row, building once over all rows is many times cheaper. ``finalize`` then, per
model whose index is deferred, missing or invalid:

1. sizes ``maintenance_work_mem`` so the whole graph fits in memory (``INDEX_MAINTENANCE_WORK_MEM``
   overrides; capped at a quarter of this machine's RAM and, for a parallel build on the embedded
   server, at half of the free ``/dev/shm``, where parallel builds keep the graph),
2. sets ``max_parallel_maintenance_workers`` (``INDEX_PARALLEL_WORKERS``, default cores - 1),
3. ``CREATE INDEX CONCURRENTLY``: the sensor, the retry queue or another shard may still write
   embeddings while the index builds; a plain ``CREATE INDEX`` would block their inserts for
   the whole build (minutes at a million rows). The price is a second pass over the rows that
   arrived meanwhile and no transaction around the build, so a crash can leave an INVALID
   index behind: the next finalize drops and rebuilds it,
4. records the index (name, state, build seconds, parameters) in ``embedding_models``,

and once after all builds ``VACUUM ANALYZE image_embeddings`` (visibility map, planner
statistics for the new rows). A model already indexed is only reported.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from assemblage_assets.core import settings
from assemblage_assets.embeddings import vectors

_FINALIZE_LOCK_CLASS = 7_312_005  # advisory lock (class, hashtext(model)): one build per model at a time
_NO_FIT_NOTICE = "no longer fits into maintenance_work_mem"
_MIN_MEMORY_KB = 64 * 1024
_UNITS_KB = {"kb": 1, "mb": 1024, "gb": 1024**2, "tb": 1024**3}


def parse_memory_kb(text: str) -> int:
    """'2GB', '512MB', '65536kB' or a bare number of kB (Postgres' own units) -> kB."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]b)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (e.g. 2GB, 512MB)")
    return int(match.group(1)) * _UNITS_KB[(match.group(2) or "kb").lower()]


def graph_bytes(rows: int, dim: int, m: int) -> int:
    """pgvector 0.6's in-memory HNSW graph: per element the vector (4 bytes a dimension), its
    layer-0 neighbour list (2m candidates of 16 bytes; upper layers add ~1/m of that) and ~200
    bytes of element header and list overhead. 768-d, m=16: ~3.8 kB a row, ~3.8 GB a million."""
    return rows * (4 * dim + 32 * m + 200)


def _ram_kb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    except (ValueError, OSError):
        return 8 * 1024**2


def _local_server(conn: psycopg.Connection) -> bool:
    host = conn.info.host or ""
    return host.startswith("/") or host in ("", "localhost", "127.0.0.1", "::1")


def _shm_free_kb() -> int | None:
    try:
        return shutil.disk_usage("/dev/shm").free // 1024
    except OSError:
        return None


@dataclass
class BuildPlan:
    maintenance_work_mem_kb: int
    workers: int
    notes: list[str] = field(default_factory=list)


def plan_build(conn: psycopg.Connection, rows: int, dim: int, m: int) -> BuildPlan:
    """Memory and workers for one build (see the module docstring)."""
    notes: list[str] = []
    configured = settings.env_str("INDEX_MAINTENANCE_WORK_MEM")
    wanted = parse_memory_kb(configured) if configured else max(_MIN_MEMORY_KB, graph_bytes(rows, dim, m) * 5 // 4 // 1024)
    cap = max(_MIN_MEMORY_KB, _ram_kb() // 4)
    workers = max(0, settings.env_int("INDEX_PARALLEL_WORKERS", (os.cpu_count() or 1) - 1))
    shm = _shm_free_kb() if _local_server(conn) else None
    if workers and shm is not None and shm // 2 < min(wanted, cap):
        # A parallel build keeps the graph in dynamic shared memory (/dev/shm for the embedded
        # server); when that is small, build in the leader's own memory instead.
        workers = 0
        notes.append(f"/dev/shm has {shm // 1024} MB free: serial build")
    kb = min(wanted, cap)
    if kb < wanted:
        notes.append(f"maintenance_work_mem capped at {kb // 1024} MB (a quarter of RAM)")
    return BuildPlan(kb, workers, notes)


@dataclass
class ModelIndex:
    model: str
    dim: int
    action: str  # built | rebuilt | recorded | ready | unsupported | busy
    index_name: str | None = None
    rows: int = 0
    build_seconds: float | None = None
    index_bytes: int | None = None
    m: int | None = None
    ef_construction: int | None = None
    maintenance_work_mem: str | None = None
    workers: int | None = None
    graph_fit_in_memory: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class FinalizeReport:
    models: list[ModelIndex]
    vacuum_seconds: float | None = None  # None: nothing built, no VACUUM ANALYZE

    @property
    def built(self) -> list[ModelIndex]:
        return [r for r in self.models if r.action in ("built", "rebuilt")]

    def as_dict(self) -> dict:
        return {"models": [asdict(r) for r in self.models], "vacuum_seconds": self.vacuum_seconds}


def index_status(conn: psycopg.Connection, name: str | None) -> str:
    """'missing', 'valid' or 'invalid' (left by a crashed or cancelled CONCURRENTLY build)."""
    if name is None:
        return "missing"
    row = conn.cursor(row_factory=dict_row).execute(
        "SELECT i.indisvalid AND i.indisready AS ok FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)
    ).fetchone()
    return "missing" if row is None else "valid" if row["ok"] else "invalid"


def _index_bytes(conn: psycopg.Connection, name: str) -> int:
    return int(conn.cursor(row_factory=dict_row).execute(
        "SELECT pg_relation_size(to_regclass(%s)) AS n", (name,)).fetchone()["n"])


def build_model_index(
    conn: psycopg.Connection, model: dict, *, concurrently: bool = True, log: Callable[[str], None] = lambda _: None
) -> ModelIndex:
    """Build (or record, or just report) one model's index. ``conn`` must be in autocommit mode."""
    result = ModelIndex(model=model["model"], dim=int(model["dim"]), action="ready", index_name=model["index_name"])
    if int(model["dim"]) > vectors.HNSW_MAX_DIM:
        result.action = "unsupported"
        return result
    name = vectors.index_name(model["model"])
    result.index_name = name
    cur = conn.cursor(row_factory=dict_row)
    if not cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS ok", (_FINALIZE_LOCK_CLASS, model["model"])).fetchone()["ok"]:
        result.action = "busy"  # another finalize is building it right now
        return result
    try:
        status = index_status(conn, name)
        if status == "valid":
            if model["index_state"] != "ready" or model["index_name"] != name:
                result.action = "recorded"  # built by a finalize that stopped before recording it
                vectors.record_index_ready(conn, model["model"], name)
            result.index_bytes = _index_bytes(conn, name)
            return result
        if status == "invalid":
            log(f"{model['model']}: dropping invalid index {name} left by an interrupted build")
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
        result.action = "rebuilt" if status == "invalid" else "built"
        result.rows = vectors.count_vectors(conn, model["model"])
        result.m, result.ef_construction = vectors.hnsw_params()
        plan = plan_build(conn, result.rows, result.dim, result.m)
        result.maintenance_work_mem = f"{plan.maintenance_work_mem_kb // 1024}MB"
        result.workers, result.notes = plan.workers, plan.notes
        notices: list[str] = []
        handler = lambda diag: notices.append(diag.message_primary or "")  # noqa: E731
        conn.add_notice_handler(handler)
        try:
            conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(f"{plan.maintenance_work_mem_kb}kB")))
            conn.execute(sql.SQL("SET max_parallel_maintenance_workers = {}").format(sql.Literal(plan.workers)))
            # Vectors live out of line (TOAST): the main heap looks small to the planner, which
            # would then plan no workers at all. Let max_parallel_maintenance_workers decide.
            conn.execute("SET min_parallel_table_scan_size = 0")
            log(f"{model['model']}: building {name} over {result.rows} vectors "
                f"(maintenance_work_mem {result.maintenance_work_mem}, {plan.workers} parallel workers)")
            started = time.perf_counter()
            conn.execute(vectors.index_ddl(model["model"], result.dim, name, concurrently=concurrently))
            result.build_seconds = round(time.perf_counter() - started, 3)
        finally:
            conn.remove_notice_handler(handler)
            conn.execute("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers; RESET min_parallel_table_scan_size")
        result.graph_fit_in_memory = not any(_NO_FIT_NOTICE in n for n in notices)
        if not result.graph_fit_in_memory:
            result.notes.append("graph outgrew maintenance_work_mem: the rest was built on disk (slower)")
        result.index_bytes = _index_bytes(conn, name)
        params = {"m": result.m, "ef_construction": result.ef_construction,
                  "maintenance_work_mem": result.maintenance_work_mem, "workers": plan.workers,
                  "rows": result.rows, "concurrently": concurrently, "graph_fit_in_memory": result.graph_fit_in_memory}
        vectors.record_index_built(conn, model["model"], name, result.build_seconds, params)
        log(f"{model['model']}: built in {result.build_seconds:.1f} s, {result.index_bytes / 1e6:.1f} MB")
        return result
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_FINALIZE_LOCK_CLASS, model["model"]))


def finalize(
    conn: psycopg.Connection, model: str | None = None, *, concurrently: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> FinalizeReport:
    """Build every missing, deferred or invalid model index (or only ``model``'s), then VACUUM
    ANALYZE the table once if anything was built. Idempotent: a second call only reports."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE or not conn.autocommit:
        raise ValueError("finalize needs an autocommit connection (CREATE INDEX CONCURRENTLY and VACUUM "
                         "cannot run inside a transaction)")
    models = vectors.models_for_index(conn, model)
    if model is not None and not models:
        raise ValueError(f"no model {model!r} in embedding_models")
    report = FinalizeReport([build_model_index(conn, m, concurrently=concurrently, log=log) for m in models])
    if report.built:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE image_embeddings")
        report.vacuum_seconds = round(time.perf_counter() - started, 3)
        log(f"VACUUM ANALYZE image_embeddings: {report.vacuum_seconds:.1f} s")
    return report

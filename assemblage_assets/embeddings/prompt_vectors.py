"""Text vectors of the zero-shot tag prompts: remembered per process, kept in ``prompt_vectors``
across processes (every Dagster step is one), embedded only when missing.

The vocabulary is small (tens to a few hundred prompts) but a shard's step used to embed all of
it before its first image: seconds of a local text tower per shard, tokens of a paid one. Rows
are keyed by (model, backend, prompt); owner of the table's writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import psycopg

_MEMO: dict[tuple[str, str, tuple[str, ...]], np.ndarray] = {}


def stored(conn: psycopg.Connection, model: str, backend: str, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    rows = conn.execute(
        "SELECT prompt, embedding FROM prompt_vectors WHERE model = %s AND backend = %s AND prompt = ANY(%s)",
        (model, backend, list(prompts)),
    ).fetchall()
    return {r["prompt"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def store(conn: psycopg.Connection, model: str, backend: str, prompts: Sequence[str], vectors: np.ndarray) -> None:
    """Concurrent steps may embed the same prompts; the first row written wins."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO prompt_vectors (model, backend, prompt, embedding) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [(model, backend, p, v.tolist()) for p, v in zip(prompts, np.asarray(vectors, dtype=np.float32), strict=True)],
        )


def vectors_for(
    conn: psycopg.Connection, model: str, backend: str, prompts: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """One row per prompt, in order; ``embed`` is called only for prompts never stored."""
    key = (model, backend, tuple(prompts))
    if key in _MEMO:
        return _MEMO[key]
    found = stored(conn, model, backend, prompts)
    missing = [p for p in dict.fromkeys(prompts) if p not in found]
    if missing:
        fresh = np.asarray(embed(missing), dtype=np.float32)
        store(conn, model, backend, missing, fresh)
        found.update(zip(missing, fresh, strict=True))
    _MEMO[key] = np.stack([found[p] for p in prompts])
    return _MEMO[key]


def forget() -> None:
    """Drop the per-process memo (benchmarks and tests that want the stored path)."""
    _MEMO.clear()

"""The paid-call log (``embedding_usage_log``): one row per paid call (an image's, a text
query's) with its units (predict seconds or tokens), its cost from the configured prices and
the billable HTTP requests behind it (``requests``: an OpenAI image is a caption and an
embedding). Counts of "calls" reported anywhere are sums of ``requests``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from resources.embedding.types import Usage


@dataclass(frozen=True)
class UsageRow:
    provider: str
    model: str
    image_id: str | None
    usage: Usage
    purpose: str = "image"  # image | text | provider-test
    ok: bool = True  # False: paid, but the output could not be used
    run_id: str | None = None
    owner: str | None = None  # None: the owner of ``image_id`` (or nobody's, for a call without one)


def log_usage(conn: psycopg.Connection, rows: Sequence[UsageRow]) -> None:
    """Append usage rows; on an autocommit connection they are committed at once."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO embedding_usage_log (provider, model, image_id, purpose, units, unit,
                                                input_tokens, output_tokens, cost_usd, ok, run_id, requests, owner)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                       COALESCE(%s, (SELECT owner FROM images WHERE id = %s)))""",
            [
                (r.provider, r.model, r.image_id, r.purpose, r.usage.units, r.usage.unit, r.usage.input_tokens,
                 r.usage.output_tokens, round(r.usage.cost_usd, 8), r.ok, r.run_id, max(1, r.usage.requests),
                 r.owner, r.image_id)
                for r in rows
            ],
        )


def run_cost(conn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """A run's spend; ``calls`` is its billable requests."""
    row = conn.cursor(row_factory=dict_row).execute(
        """SELECT coalesce(sum(requests), 0)::int AS calls, coalesce(sum(cost_usd), 0)::float AS cost_usd,
                  coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
                  count(*) FILTER (WHERE NOT ok) AS unusable
           FROM embedding_usage_log WHERE run_id = %s""",
        (run_id,),
    ).fetchone()
    return dict(row)


def cost_summary(conn: psycopg.Connection, recent_runs: int = 5) -> dict[str, Any]:
    """Spend per provider and model, per owner, and the latest runs that paid anything (for
    ``status``); ``calls`` are billable requests."""
    totals = conn.cursor(row_factory=dict_row).execute(
        """SELECT provider, model, coalesce(sum(requests), 0)::int AS calls, coalesce(sum(cost_usd), 0)::float AS cost_usd,
                  coalesce(sum(units), 0)::float AS units, min(unit) AS unit
           FROM embedding_usage_log GROUP BY provider, model ORDER BY provider, model"""
    ).fetchall()
    runs = conn.cursor(row_factory=dict_row).execute(
        """SELECT run_id, provider, model, coalesce(sum(requests), 0)::int AS calls, coalesce(sum(cost_usd), 0)::float AS cost_usd,
                  max(created_at) AS last_call
           FROM embedding_usage_log WHERE run_id IS NOT NULL
           GROUP BY run_id, provider, model ORDER BY max(created_at) DESC LIMIT %s""",
        (recent_runs,),
    ).fetchall()
    owners = conn.cursor(row_factory=dict_row).execute(
        """SELECT owner, coalesce(sum(requests), 0)::int AS calls, coalesce(sum(cost_usd), 0)::float AS cost_usd
           FROM embedding_usage_log GROUP BY owner ORDER BY sum(cost_usd) DESC NULLS LAST, owner"""
    ).fetchall()
    return {"by_model": totals, "by_owner": owners, "recent_runs": runs,
            "total_usd": round(sum(t["cost_usd"] for t in totals), 6)}

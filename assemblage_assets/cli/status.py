"""``assemblage status``: files per status and failures, vehicle backfill, embeddings and cost."""

from __future__ import annotations

import argparse
import json
from typing import Any

from assemblage_assets.cli.common import configured_provider, database_dsn


def collect_status(shard: str | None = None, failure_limit: int = 50) -> dict[str, Any]:
    from assemblage_assets.core import db
    from assemblage_assets.images import catalog_reports, places
    from assemblage_assets.vehicles import records

    dsn = database_dsn()
    with db.connect(dsn) as conn:
        return {
            "database": db.redact(dsn),
            "images": catalog_reports.count_images(conn),
            "status_counts": catalog_reports.status_counts(conn, shard),
            "failures": catalog_reports.failures(conn, shard, failure_limit),
            "places": places.place_counts(conn, shard),
            "vehicles": records.monitoring(conn, failure_limit),
            "embeddings": (embeddings := embedding_status(conn)),
            "disagreements": catalog_reports.status_disagreements(conn, embeddings["active_model"], failure_limit),
        }


def embedding_status(conn: Any) -> dict[str, Any]:
    """The embedding part of ``assemblage status``."""
    from assemblage_assets.embeddings import intents, retry_queue, vectors
    from assemblage_assets.embeddings.candidates import count_candidates
    from assemblage_assets.embeddings.search import stored_models
    from assemblage_assets.embeddings.usage_log import cost_summary

    try:
        provider = configured_provider()
        active, provider_name = provider.model_id, provider.provider_name
    except ValueError as exc:
        active, provider_name = None, f"invalid: {exc}"
    return {
        "provider": provider_name,
        "active_model": active,
        "models": stored_models(conn),
        "backends": vectors.backend_counts(conn),  # vectors per (model, backend): a mixed catalogue shows
        "missing": count_candidates(conn, None, active) if active else None,
        "queue": retry_queue.queue_counts(conn, active),
        "errored": retry_queue.errored(conn, active, 10),
        "cost": cost_summary(conn),
        "paid_calls": intents.journal_summary(conn),
    }


def print_status(status: dict[str, Any]) -> None:
    counts = status["status_counts"]
    print(f"database: {status['database']}")
    print(f"distinct images: {status['images']}")
    print("files per status: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print_places(status.get("places"))
    if status["failures"]:
        print(f"failed or rejected files ({len(status['failures'])} shown):")
        for row in status["failures"]:
            print(f"  [{row['status']}:{row['error_kind']}] {row['local_path']}: {row['error_message']}")
    v = status["vehicles"]
    print(
        f"vehicles needing image backfill: {v['needing_backfill']} ({v['due_now']} due now, {v['retrying']} "
        f"waiting to retry); backfilled: {v['backfilled']} ({v['vehicle_images']} images); failed: {v['failed']}"
    )
    if v["failed_urls"]:
        print(f"failed vehicle image URLs ({len(v['failed_urls'])} shown):")
        for row in v["failed_urls"]:
            print(f"  [{row['vehicle_status']}:{row['kind']}] vehicle {row['vehicle_id']} {row['url']}: {row['reason']}")
    print_embedding_status(status.get("embeddings"))
    print_disagreements(status.get("disagreements"))


def print_places(found: dict[str, Any] | None) -> None:
    """Images with a GPS position, how many of them near a known place, and the top places."""
    if not found or not found["located"]:
        return
    print(f"places: {found['located']} image(s) with a GPS position, {found['placed']} near a known place")
    for row in found["top"]:
        print(f"  {row['city']}, {row['region'] + ', ' if row['region'] else ''}{row['country']}: {row['images']}")


def print_disagreements(found: dict[str, Any] | None) -> None:
    """Rows whose status the catalogue contradicts: a bug or an interrupted older version.
    The next r2_objects / embeddings run of the shard repairs the 'uploaded-with-vector' ones."""
    if not found or not found["total"]:
        return
    print(f"STATUS DISAGREES WITH THE CATALOGUE for {found['total']} path(s): "
          + ", ".join(f"{issue} {n}" for issue, n in sorted(found["by_issue"].items())))
    for row in found["rows"]:
        print(f"  [{row['issue']}] {row['shard']}: {row['local_path']} (status {row['status']})")


def print_embedding_status(st: dict[str, Any] | None) -> None:
    if not st:
        return
    print(f"embeddings: provider {st['provider']}, active model {st['active_model']}")
    for m in st["models"]:
        print(f"  {m['model']}: {m['vectors']} vector(s), {m['dim']}-d ({m['provider']})")
        by_backend = [b for b in st.get("backends", []) if b["model"] == m["model"] and b["backend"]]
        if by_backend:
            mixed = " (mixed: `assemblage embed --reembed` makes them uniform)" if len(by_backend) > 1 else ""
            print("    backends: " + ", ".join(f"{b['backend']} {b['vectors']}" for b in by_backend) + mixed)
    q = st["queue"]
    print(f"  missing for the active model: {st['missing']}; retry queue: {q['retry']} ({q['retry_due']} due); "
          f"errored: {q['errored']}")
    for row in st["errored"]:
        print(f"    [errored:{row['error_kind']}] {row['local_path'] or row['image_id']}: {row['last_error']}")
    cost = st["cost"]
    print(f"  embedding cost: ${cost['total_usd']:.4f} in total")
    for row in cost["by_model"]:
        print(f"    {row['provider']} {row['model']}: {row['calls']} paid request(s), ${row['cost_usd']:.4f}")
    for row in cost.get("by_owner", []):
        print(f"    owner {row['owner'] or '(none)'}: {row['calls']} paid request(s), ${row['cost_usd']:.4f}")
    for row in cost["recent_runs"]:
        print(f"    run {row['run_id'][:8]}: {row['calls']} paid request(s), ${row['cost_usd']:.4f} ({row['model']})")
    print_paid_calls(st.get("paid_calls") or [])


def print_paid_calls(rows: list[dict[str, Any]]) -> None:
    """Paid requests a killed run left open, and those billed whose result was lost."""
    for row in rows:
        open_calls = row["intent"] + row["created"]
        parts = []
        if open_calls:
            parts.append(f"{open_calls} open since {row['oldest_open']:%Y-%m-%d %H:%M} ({row['created']} with a "
                         "provider id: fetched by the next run of their shard, the rest counted as lost then)")
        if row["lost"]:
            parts.append(f"{row['lost']} billed and lost (logged with ok = false)")
        print(f"  paid {row['request']} requests, {row['provider']} {row['model']}: " + "; ".join(parts))


def cmd_status(args: argparse.Namespace) -> int:
    status = collect_status(args.shard, args.limit)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    return 0


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("status", help="files per status and failures with reasons; vehicle image backfill")
    p.add_argument("--shard", help="only this shard")
    p.add_argument("--limit", type=int, default=50, help="failures to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

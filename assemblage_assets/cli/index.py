"""``assemblage index build|status``: the vector-index finalize step from the command line,
launched as ``finalize_index_job`` so the run shows up in the UI."""

from __future__ import annotations

import argparse
import json
from typing import Any

from assemblage_assets.cli.common import database_dsn
from assemblage_assets.constants import FINALIZE_INDEX_JOB


def cmd_index(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import vectors

    if args.action == "status":
        with db.connect(database_dsn()) as conn:
            rows = vectors.index_states(conn)
        for row in rows:
            built = f", built in {row['index_build_seconds']:.1f}s" if row["index_build_seconds"] else ""
            print(f"{row['model']}: {row['vectors']} vectors, {row['dim']}-d, index {row['index_state']}"
                  f"{' (' + row['index_name'] + ')' if row['index_name'] else ''}{built}")
        return 0
    database_dsn()  # started and migrated before the run
    return 0 if build(args.model, verbose=args.verbose, concurrently=not args.blocking) else 1


def build(model: str | None, *, verbose: bool = False, concurrently: bool = True) -> bool:
    """One in-process ``finalize_index_job`` run in the instance the UI reads; prints per model."""
    import dagster as dg

    from assemblage_assets.cli.launch import QUIET_LOGGING
    from assemblage_assets.platform.dagster_home import ensure_dagster_home

    ensure_dagster_home()
    from assemblage_assets.definitions import defs

    run_config: dict[str, Any] = {} if verbose else dict(QUIET_LOGGING)
    run_config["ops"] = {"vector_index": {"config": {"model": model or "", "concurrently": concurrently}}}
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(FINALIZE_INDEX_JOB).execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False
        )
    if not result.success:
        failed = [e for e in result.all_events if e.is_step_failure]
        print(f"finalize_index_job FAILED: {failed[0].event_specific_data.error.message.strip() if failed else 'run failed'}")
        return False
    (materialization,) = result.asset_materializations_for_node("vector_index")
    for entry in materialization.metadata["models"].value:
        figures = (f": {entry['rows']} vectors in {entry['build_seconds']:.1f}s, {entry['index_bytes'] / 1e6:.1f} MB, "
                   f"m={entry['m']} ef_construction={entry['ef_construction']}, maintenance_work_mem "
                   f"{entry['maintenance_work_mem']}, {entry['workers']} workers" if entry["build_seconds"] else "")
        print(f"{entry['model']}: {entry['action']}{figures}")
        for note in entry["notes"]:
            print(f"  note: {note}")
    if "vacuum_analyze_seconds" in materialization.metadata:
        print(f"VACUUM ANALYZE image_embeddings: {materialization.metadata['vacuum_analyze_seconds'].value:.1f}s")
    print(f"run {result.run_id[:8]}" + ("" if verbose else f" ({json.dumps({'built': materialization.metadata['built'].value})})"))
    return True


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("index", help="vector indexes: build deferred/missing HNSW indexes (finalize a bulk load), or list them")
    p.add_argument("action", choices=["build", "status"])
    p.add_argument("--model", help="only this model (default: every model needing an index)")
    p.add_argument("--blocking", action="store_true",
                   help="plain CREATE INDEX instead of CONCURRENTLY: faster, but embedding writes wait for it")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_index)

"""``assemblage``: the command line for operators (and ``make run``).

Every command that does work launches Dagster jobs, so what it does shows up in the UI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from assemblage_assets import settings


def _dsn() -> str:
    from assemblage_assets import db

    return db.resolve_dsn()


def cmd_db(args: argparse.Namespace) -> int:
    from assemblage_assets import db

    if args.action == "url":
        print(_dsn())
    elif args.action == "migrate":
        applied = db.migrate(_dsn())
        print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    elif args.action == "start":
        print(f"embedded Postgres running: {_dsn()}")
    elif args.action == "stop":
        stopped = db.stop_embedded(settings.Paths.from_env().pgdata)
        print("embedded Postgres stopped" if stopped else "embedded Postgres was not running")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from assemblage_assets.sample_data import write_sample_tree

    tree = write_sample_tree(Path(args.dir), photos_per_shard=args.photos_per_shard)
    print(
        f"wrote {tree.files} files to {tree.root}: {tree.expected_ok} images, "
        f"{tree.expected_failed} broken on purpose, {tree.expected_rejected} non-image; "
        f"shards: {', '.join(tree.shards)}{' + top-level files' if tree.has_top_level else ''}"
    )
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from assemblage_assets.shards import discover_shards

    images_dir = Path(args.images_dir).resolve()
    if args.register:
        import dagster as dg

        from assemblage_assets.shard_sensor import register_shards

        settings.ensure_dagster_home()
        added = register_shards(dg.DagsterInstance.get(), images_dir)
        print(f"registered {len(added)} new shard partition(s)", file=sys.stderr)
    for shard in sorted(discover_shards(images_dir), key=lambda s: s.key):
        print(f"{shard.key}\t{shard.display_name}")
    return 0


def _run_job(job_name: str, args: argparse.Namespace) -> int:
    from assemblage_assets.launch import materialize_shards

    runs = materialize_shards(job_name, Path(args.images_dir).resolve(), args.shard or (), verbose=args.verbose)
    failed = [r for r in runs if not r.success]
    print(f"{len(runs) - len(failed)}/{len(runs)} shard run(s) succeeded")
    return 1 if failed else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    return _run_job("ingest_shard_job", args)


def collect_status(shard: str | None = None, failure_limit: int = 50) -> dict[str, Any]:
    from assemblage_assets import catalog, db

    dsn = _dsn()
    db.migrate(dsn)
    with db.connect(dsn) as conn:
        return {
            "database": db.redact(dsn),
            "images": conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"],
            "status_counts": catalog.status_counts(conn, shard),
            "failures": catalog.failures(conn, shard, failure_limit),
        }


def print_status(status: dict[str, Any]) -> None:
    counts = status["status_counts"]
    print(f"database: {status['database']}")
    print(f"distinct images: {status['images']}")
    print("files per status: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if status["failures"]:
        print(f"failed or rejected files ({len(status['failures'])} shown):")
        for row in status["failures"]:
            print(f"  [{row['status']}:{row['error_kind']}] {row['local_path']}: {row['error_message']}")


def cmd_status(args: argparse.Namespace) -> int:
    status = collect_status(args.shard, args.limit)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """What ``make run`` does: sample data if needed, ingest everything, summarise."""
    from assemblage_assets import db
    from assemblage_assets.launch import materialize_shards
    from assemblage_assets.sample_data import write_sample_tree

    paths = settings.Paths.from_env()
    images_dir = Path(args.images_dir).resolve()
    dsn = _dsn()
    applied = db.migrate(dsn)
    print(f"database: {db.redact(dsn)} ({'migrated: ' + ', '.join(applied) if applied else 'schema up to date'})")
    if not images_dir.exists() or not any(images_dir.iterdir()):
        tree = write_sample_tree(images_dir)
        print(f"generated sample tree: {tree.files} files in {images_dir}")
    runs = materialize_shards("ingest_shard_job", images_dir)
    print()
    print_status(collect_status())
    print()
    print(f"images:            {images_dir}")
    print(f"derivative cache:  {paths.derivative_cache} (thumbnail/, watermarked/)")
    print(f"Dagster home:      {settings.ensure_dagster_home()}")
    print("open the UI:       make ui   (then http://127.0.0.1:3000)")
    return 0 if all(r.success for r in runs) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assemblage",
        description="Image ingestion on Dagster: scan, validate, derive, publish and index images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_images = str(settings.images_dir())

    p = sub.add_parser("db", help="database: print the DSN, apply migrations, start/stop the embedded server")
    p.add_argument("action", choices=["url", "migrate", "start", "stop"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("sample-data", help="write the sample image tree (photos with EXIF, odd formats, broken files)")
    p.add_argument("dir", help="destination folder")
    p.add_argument("--photos-per-shard", type=int, default=8)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("shards", help="list the directory shards of IMAGES_DIR with their partition keys")
    p.add_argument("--images-dir", default=default_images)
    p.add_argument("--register", action="store_true", help="also add missing shards as Dagster partitions")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("ingest", help="scan and derive shards through Dagster (raw_files + derivatives)")
    p.add_argument("--images-dir", default=default_images, help=f"source tree (default: IMAGES_DIR or {default_images})")
    p.add_argument("--shard", action="append", metavar="KEY", help="shard key to run (repeatable; default: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("status", help="files per status and failures with reasons")
    p.add_argument("--shard", help="only this shard")
    p.add_argument("--limit", type=int, default=50, help="failures to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("demo", help="what `make run` does: sample data if empty, ingest all, summary")
    p.add_argument("--images-dir", default=default_images)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""``assemblage``: the command line for operators (and ``make run``).

Every command that does work launches Dagster jobs, so what it does shows up in the UI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from assemblage_assets.core import settings


def _dsn() -> str:
    from assemblage_assets.core import db

    return db.resolve_dsn()


def cmd_db(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db

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


def cmd_dagster_config(args: argparse.Namespace) -> int:
    from assemblage_assets.platform import instance_config

    if args.write:
        home = settings.ensure_dagster_home()  # also sets the per-pool limits in the instance
        print(f"{home / 'dagster.yaml'}", file=sys.stderr)
    print(instance_config.render_yaml(), end="")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from assemblage_assets.dev.sample_data import write_sample_tree

    tree = write_sample_tree(Path(args.dir), photos_per_shard=args.photos_per_shard)
    print(
        f"wrote {tree.files} files to {tree.root}: {tree.expected_ok} images, "
        f"{tree.expected_failed} broken on purpose, {tree.expected_rejected} non-image; "
        f"shards: {', '.join(tree.shards)}{' + top-level files' if tree.has_top_level else ''}"
    )
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from assemblage_assets.images.shards import discover_shards

    images_dir = Path(args.images_dir).resolve()
    if args.register:
        import dagster as dg

        from assemblage_assets.images.sensors import register_shards

        settings.ensure_dagster_home()
        added = register_shards(dg.DagsterInstance.get(), images_dir)
        print(f"registered {len(added)} new shard partition(s)", file=sys.stderr)
    for shard in sorted(discover_shards(images_dir), key=lambda s: s.key):
        print(f"{shard.key}\t{shard.display_name}")
    return 0


def _run_job(job_name: str, args: argparse.Namespace) -> int:
    from assemblage_assets.cli.launch import materialize_shards

    runs = materialize_shards(job_name, Path(args.images_dir).resolve(), args.shard or (), verbose=args.verbose)
    failed = [r for r in runs if not r.success]
    print(f"{len(runs) - len(failed)}/{len(runs)} shard run(s) succeeded")
    return 1 if failed else 0


def check_object_store() -> str:
    """Preflight the configured object store once, before any run; returns where it publishes.

    Raises ``SystemExit`` with one clear message (naming the setting, never a secret) when the
    credentials, bucket or endpoint are wrong.
    """
    from resources.object_store import ObjectStore, ObjectStoreError

    try:
        # Resolves the EnvVar-held secrets the way a Dagster run does.
        with ObjectStore.from_env().process_config_and_initialize_cm() as store:
            store.preflight()
            return store.describe()
    except ObjectStoreError as exc:
        raise SystemExit(f"object store not usable: {exc}") from None


def cmd_ingest(args: argparse.Namespace) -> int:
    print(f"publishing to {check_object_store()}")
    return _run_job("ingest_shard_job", args)


def cmd_upload(args: argparse.Namespace) -> int:
    """The older ``npm run upload``: publish processed images of the shards (r2_objects)."""
    print(f"publishing to {check_object_store()}")
    return _run_job("publish_shard_job", args)


def cmd_backfill_vehicles(args: argparse.Namespace) -> int:
    """The older ``npm run trickle-backfill-images -- ...``: vehicle_image_backfill through Dagster."""
    from assemblage_assets.cli.launch import materialize_vehicle_backfill

    if not args.dry_run:
        print(f"storing to {check_object_store()}")
    options: dict[str, Any] = {
        "limit": args.limit,
        "batch_size": args.batch_size,
        "max_images_per_vehicle": args.max_images,
        "dry_run": args.dry_run,
    }
    if args.pause is not None:
        options["pause_seconds"] = args.pause
    runs = materialize_vehicle_backfill(args.organization_id, options, verbose=args.verbose)
    for run in runs:
        m = run.metadata
        if not m:
            continue
        if m.get("dry_run"):
            print(f"{run.shard}: dry run, {m['vehicles_selected']} vehicle(s), {m['urls_planned']} URL(s) would be fetched")
            for vehicle_id, urls in m["would_fetch"].items():
                print(f"  {vehicle_id}: {len(urls)} URL(s)")
                for url in urls:
                    print(f"    {url}")
        else:
            print(
                f"{run.shard}: processed {m['vehicles_selected']}, backfilled {m['vehicles_backfilled']}, "
                f"retrying {m['vehicles_retrying']}, failed {m['vehicles_failed']}, "
                f"images inserted {m['images_stored']}, URLs failed {m['urls_failed']}, still due {m['vehicles_still_due']}"
            )
    failed = [r for r in runs if not r.success]
    print(f"{len(runs) - len(failed)}/{len(runs)} organization run(s) succeeded")
    return 1 if failed else 0


def collect_status(shard: str | None = None, failure_limit: int = 50) -> dict[str, Any]:
    from assemblage_assets.cli import embeddings as embed_cli
    from assemblage_assets.core import db
    from assemblage_assets.images import catalog
    from assemblage_assets.vehicles.backfill import backfill as vehicles

    dsn = _dsn()
    db.migrate(dsn)
    with db.connect(dsn) as conn:
        return {
            "database": db.redact(dsn),
            "images": conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"],
            "status_counts": catalog.status_counts(conn, shard),
            "failures": catalog.failures(conn, shard, failure_limit),
            "vehicles": vehicles.monitoring(conn, failure_limit),
            "embeddings": embed_cli.status(conn),
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
    v = status["vehicles"]
    print(
        f"vehicles needing image backfill: {v['needing_backfill']} ({v['due_now']} due now, {v['retrying']} "
        f"waiting to retry); backfilled: {v['backfilled']} ({v['vehicle_images']} images); failed: {v['failed']}"
    )
    if v["failed_urls"]:
        print(f"failed vehicle image URLs ({len(v['failed_urls'])} shown):")
        for row in v["failed_urls"]:
            print(f"  [{row['vehicle_status']}:{row['kind']}] vehicle {row['vehicle_id']} {row['url']}: {row['reason']}")
    print_status_embeddings(status)


def print_status_embeddings(status: dict[str, Any]) -> None:
    from assemblage_assets.cli import embeddings as embed_cli

    embed_cli.print_status(status.get("embeddings"))


def cmd_status(args: argparse.Namespace) -> int:
    status = collect_status(args.shard, args.limit)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """What ``make run`` does: sample data if needed, ingest and embed everything, summarise."""
    from assemblage_assets.cli import embeddings as embed_cli
    from assemblage_assets.cli.launch import materialize_shards
    from assemblage_assets.core import db
    from assemblage_assets.dev.sample_data import write_sample_tree

    paths = settings.Paths.from_env()
    images_dir = Path(args.images_dir).resolve()
    dsn = _dsn()
    applied = db.migrate(dsn)
    print(f"database: {db.redact(dsn)} ({'migrated: ' + ', '.join(applied) if applied else 'schema up to date'})")
    if not images_dir.exists() or not any(images_dir.iterdir()):
        tree = write_sample_tree(images_dir)
        print(f"generated sample tree: {tree.files} files in {images_dir}")
    tiny = embed_cli.prepare_demo_model(args.allow_tiny_model)  # before definitions read CLIP_MODEL
    store = check_object_store()
    runs = materialize_shards("ingest_shard_job", images_dir)
    runs += embed_cli.run_demo(tiny)
    print()
    print_status(collect_status())
    print()
    print(f"images:            {images_dir}")
    print(f"derivative cache:  {paths.derivative_cache} (thumbnail/, watermarked/)")
    print(f"published to:      {store} (original/, thumbnail/, watermarked/)")
    print(f"Dagster home:      {settings.ensure_dagster_home()}")
    print("open the UI:       make ui   (then http://127.0.0.1:3000)")
    return 0 if all(r.success for r in runs) else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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

    p = sub.add_parser("ingest", help="scan, derive and publish shards through Dagster (raw_files + derivatives + r2_objects)")
    p.add_argument("--images-dir", default=default_images, help=f"source tree (default: IMAGES_DIR or {default_images})")
    p.add_argument("--shard", action="append", metavar="KEY", help="shard key to run (repeatable; default: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("upload", help="publish processed shards to the object store through Dagster (r2_objects)")
    p.add_argument("--images-dir", default=default_images, help=f"source tree (default: IMAGES_DIR or {default_images})")
    p.add_argument("--shard", action="append", metavar="KEY", help="shard key to publish (repeatable; default: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        "backfill-vehicles",
        help="download vehicles' listing images through Dagster (vehicle_image_backfill); "
        "like `npm run trickle-backfill-images`",
    )
    p.add_argument("--limit", type=_positive_int, default=100, help="vehicles to handle (default 100)")
    p.add_argument("--batch-size", type=_positive_int, default=10, help="vehicles per batch (default 10)")
    p.add_argument("--max-images", type=_positive_int, default=20, help="images per vehicle (default 20)")
    p.add_argument("--organization-id", metavar="ID", help="only this organization: its uuid, or 'no-organization' for vehicles without one")
    p.add_argument("--dry-run", action="store_true", help="list what would be fetched; write nothing")
    p.add_argument("--pause", type=float, metavar="SECONDS", help="pause between batches (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_backfill_vehicles)

    p = sub.add_parser("status", help="files per status and failures with reasons; vehicle image backfill")
    p.add_argument("--shard", help="only this shard")
    p.add_argument("--limit", type=int, default=50, help="failures to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    from assemblage_assets.cli.embeddings import add_commands as add_embedding_commands

    add_embedding_commands(sub, default_images)

    from assemblage_assets.cli.index import add_commands as add_index_commands

    add_index_commands(sub)

    p = sub.add_parser("dagster-config", help="print the dagster.yaml rendered from the environment (storage, queue, limits)")
    p.add_argument("--write", action="store_true", help="also write it to DAGSTER_HOME (unless user-owned) and set pool limits")
    p.set_defaults(func=cmd_dagster_config)

    p = sub.add_parser("demo", help="what `make run` does: sample data if empty, ingest and embed all, summary")
    p.add_argument("--images-dir", default=default_images)
    p.add_argument(
        "--allow-tiny-model", action="store_true",
        help="if the configured CLIP model cannot be loaded (offline), embed with a tiny random model "
        "whose vectors carry no meaning (also ASSEMBLAGE_DEMO_TINY_MODEL=1)",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

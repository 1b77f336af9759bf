"""``assemblage backfill-vehicles``: the older ``npm run trickle-backfill-images``, through Dagster."""

from __future__ import annotations

import argparse
from typing import Any

from assemblage_assets.cli.common import check_object_store, positive_int


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


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser(
        "backfill-vehicles",
        help="download vehicles' listing images through Dagster (vehicle_image_backfill); "
        "like `npm run trickle-backfill-images`",
    )
    p.add_argument("--limit", type=positive_int, default=100, help="vehicles to handle (default 100)")
    p.add_argument("--batch-size", type=positive_int, default=10, help="vehicles per batch (default 10)")
    p.add_argument("--max-images", type=positive_int, default=20, help="images per vehicle (default 20)")
    p.add_argument("--organization-id", metavar="ID", help="only this organization: its uuid, or 'no-organization' for vehicles without one")
    p.add_argument("--dry-run", action="store_true", help="list what would be fetched; write nothing")
    p.add_argument("--pause", type=float, metavar="SECONDS", help="pause between batches (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_backfill_vehicles)

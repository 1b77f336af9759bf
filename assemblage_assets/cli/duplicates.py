"""``assemblage duplicates``: the near-duplicate groups (from the ``duplicates`` asset)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from assemblage_assets.cli.common import database_dsn


def add_commands(sub: argparse._SubParsersAction, default_images: str) -> None:
    p = sub.add_parser(
        "duplicates",
        help="near-duplicate groups across the catalogue (representative first)",
        description="List the near-duplicate groups the duplicates asset keeps (it runs in every "
        "`assemblage ingest`). Each group lists its representative (most pixels, then earliest seen) "
        "first, then every member with its pHash Hamming distance to the representative.",
    )
    p.add_argument("--shard", metavar="KEY", help="only groups with a member in this shard")
    p.add_argument("--json", action="store_true",
                   help='one JSON array: [{"group": ID, "images": [{"image_id", "path", "distance"}, ...]}]')
    p.set_defaults(func=cmd_duplicates)


def cmd_duplicates(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.duplicates.listing import list_groups

    with db.connect(database_dsn()) as conn:
        groups = list_groups(conn, args.shard)
    if args.json:
        print(json.dumps(groups))
        return 0
    print_groups(groups, args.shard)
    return 0


def print_groups(groups: list[dict[str, Any]], shard: str | None) -> None:
    where = f" with a member in shard {shard}" if shard else ""
    members = sum(len(g["images"]) for g in groups)
    print(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates{where} ({members} images)")
    for g in groups:
        print(f"group {g['group']}:")
        for n, image in enumerate(g["images"]):
            role = "representative" if n == 0 else f"distance {image['distance']:2d}"
            clip = f", CLIP {image['clip_distance']:.3f}" if image.get("clip_distance") is not None else ""
            held = " [not published: duplicate]" if image.get("status") == "duplicate" else ""
            print(f"  {role:<15} {image['path']}  ({image['image_id'][:8]}{clip}){held}")

"""``assemblage``: the command line for operators (and ``make run``).

Every command that does work launches Dagster jobs, so what it does shows up in the UI. Each
module of this package adds its commands; this one only assembles the parser.
"""

from __future__ import annotations

import argparse
import sys

from assemblage_assets.cli import (
    captions,
    demo,
    duplicates,
    embeddings,
    export,
    images,
    index,
    platform,
    serve,
    sources,
    status,
    vehicles,
)
from assemblage_assets.core import settings

# In the order ``assemblage --help`` lists them.
COMMAND_MODULES = (platform, images, sources, vehicles, status, duplicates, embeddings, captions, index, export, serve, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assemblage",
        description="Image ingestion on Dagster: scan, validate, derive, publish and index images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_images = str(settings.images_dir())
    for module in COMMAND_MODULES:
        module.add_commands(sub, default_images)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

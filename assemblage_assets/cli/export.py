"""``assemblage export``: the catalogue as Parquet or CSV (read-only; no Dagster run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from assemblage_assets.cli.common import database_dsn, fail


def cmd_export(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings.export import export_catalogue

    model = None
    if args.with_vectors:
        from resources.embedding import active_model_id

        try:
            model = active_model_id()
        except ValueError as exc:
            return fail(f"--with-vectors needs the active model: {exc}")
    output = Path(args.output or f"catalogue{'-' + args.shard if args.shard else ''}.{args.format}")
    with db.connect(database_dsn()) as conn:
        report = export_catalogue(
            conn, output, args.format, shard=args.shard, model=model, chunk_rows=args.chunk_rows,
            progress=lambda line: print(line, file=sys.stderr),
        )
    vectors = f", vectors of {model}" if model else ""
    print(f"wrote {report.rows:,} images x {len(report.columns)} columns{vectors} to {report.path} "
          f"in {report.seconds:.1f}s")
    return 0


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser(
        "export",
        help="write the catalogue (ids, URLs, sizes, EXIF, place, tags, caption, duplicates, optionally vectors) "
        "to Parquet or CSV, in chunks",
    )
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="file format (default: parquet)")
    p.add_argument("--shard", metavar="KEY", help="only the images with a path in this shard")
    p.add_argument("--with-vectors", action="store_true",
                   help="add each image's vector of the active model (EMBEDDING_PROVIDER / CLIP_MODEL); null without one")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="file to write (default: catalogue[-SHARD].FORMAT in the current folder)")
    p.add_argument("--chunk-rows", type=int, default=1000, help="rows per chunk held in memory (default: 1000)")
    p.set_defaults(func=cmd_export)

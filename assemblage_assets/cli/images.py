"""``assemblage sample-data|shards|ingest|upload``: the image tree and its shard runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from assemblage_assets.cli.common import check_object_store
from assemblage_assets.constants import INGEST_SHARD_JOB, PUBLISH_SHARD_JOB, VERIFY_OBJECTS_JOB


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

    if args.images_dir is None:
        from assemblage_assets.cli.sources import cmd_source_shards, single_local_folder

        args.images_dir = single_local_folder(args.source)
        if args.images_dir is None:
            return cmd_source_shards(args)  # buckets, Dropbox, several folders of IMAGE_SOURCES
    images_dir = Path(args.images_dir).resolve()
    if args.register:
        import dagster as dg

        from assemblage_assets.images.sensors import register_shards
        from assemblage_assets.platform.dagster_home import ensure_dagster_home

        ensure_dagster_home()
        added = register_shards(dg.DagsterInstance.get(), images_dir)
        print(f"registered {len(added)} new shard partition(s)", file=sys.stderr)
    for shard in sorted(discover_shards(images_dir), key=lambda s: s.key):
        print(f"{shard.key}\t{shard.display_name}")
    return 0


def _run_job(job_name: str, args: argparse.Namespace, run_config: dict[str, Any] | None = None) -> int:
    from assemblage_assets.cli.launch import materialize_shards

    runs = materialize_shards(
        job_name, Path(args.images_dir).resolve(), args.shard or (), verbose=args.verbose,
        skip_idle=not getattr(args, "every_shard", True), run_config=run_config,
    )
    failed = [r for r in runs if not r.success]
    print(f"{len(runs) - len(failed)}/{len(runs)} shard run(s) succeeded")
    return 1 if failed else 0


def _run_on_sources(job_name: str, args: argparse.Namespace, run_config: dict[str, Any] | None = None) -> int:
    """One local tree (``--images-dir``, or IMAGE_SOURCES naming one folder) takes today's path
    with its idle-shard check; buckets, Dropbox and several sources run per source shard."""
    if args.images_dir is None:
        from assemblage_assets.cli.sources import run_source_shards, single_local_folder

        args.images_dir = single_local_folder(args.source)
        if args.images_dir is None:
            runs = run_source_shards(job_name, args.source, args.shard or (), verbose=args.verbose, run_config=run_config)
            failed = [r for r in runs if not r.success]
            print(f"{len(runs) - len(failed)}/{len(runs)} shard run(s) succeeded")
            return 1 if failed else 0
    return _run_job(job_name, args, run_config)


def cmd_ingest(args: argparse.Namespace) -> int:
    print(f"publishing to {check_object_store()}")
    return _run_on_sources(INGEST_SHARD_JOB, args)


def cmd_upload(args: argparse.Namespace) -> int:
    """The older ``npm run upload``: publish processed images of the shards (r2_objects)."""
    print(f"publishing to {check_object_store()}")
    return _run_on_sources(PUBLISH_SHARD_JOB, args)


def cmd_verify_objects(args: argparse.Namespace) -> int:
    """Check every object of the shards in the store and put back what is missing."""
    from assemblage_assets.images.jobs import VERIFY_RUN_CONFIG

    print(f"verifying objects in {check_object_store()}")
    return _run_on_sources(VERIFY_OBJECTS_JOB, args, VERIFY_RUN_CONFIG)


def _add_source_choice(p: Any, default_images: str) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--images-dir", default=None,
                       help=f"one local source tree, ignoring IMAGE_SOURCES (default: every source of IMAGE_SOURCES, else {default_images})")
    where.add_argument("--source", metavar="URI", help="one source of IMAGE_SOURCES (a path, s3://bucket/prefix, dropbox:/Folder, or its label)")


EVERY_SHARD_HELP = "run every selected shard, even those with nothing to do (default: skip them after a read-only check)"


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("sample-data", help="write the sample image tree (photos with EXIF, odd formats, broken files)")
    p.add_argument("dir", help="destination folder")
    p.add_argument("--photos-per-shard", type=int, default=8)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("shards", help="list the shards of IMAGE_SOURCES (else IMAGES_DIR) with their partition keys")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--images-dir", default=None, help=f"one local tree (default: IMAGE_SOURCES, else {default_images})")
    where.add_argument("--source", metavar="URI", help="one source of IMAGE_SOURCES (or its label)")
    p.add_argument("--register", action="store_true", help="also add missing shards as Dagster partitions")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("ingest", help="scan, derive, group near-duplicates and publish shards through Dagster (raw_files + derivatives + duplicates + r2_objects)")
    _add_source_choice(p, default_images)
    p.add_argument("--shard", action="append", metavar="KEY", help="shard key to run (repeatable; default: all)")
    p.add_argument("--every-shard", action="store_true", help=EVERY_SHARD_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("upload", help="publish processed shards to the object store through Dagster (r2_objects)")
    _add_source_choice(p, default_images)
    p.add_argument("--shard", action="append", metavar="KEY", help="shard key to publish (repeatable; default: all)")
    p.add_argument("--every-shard", action="store_true", help=EVERY_SHARD_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("verify-objects", help="check every object of the shards in the store and put back what is "
                       "missing (verify_shard_objects_job; ingest and upload skip shards already checked)")
    _add_source_choice(p, default_images)
    p.add_argument("--shard", action="append", metavar="KEY", help="shard key to verify (repeatable; default: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_verify_objects, every_shard=True)

"""``assemblage ingest --source URI`` (and ``ingest`` with ``IMAGE_SOURCES``) and
``assemblage process SOURCE_URI``: shards and entries of buckets and Dropbox, next to local
folders, run through the same Dagster job as a folder's shards."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from assemblage_assets.cli.common import check_object_store
from assemblage_assets.constants import INGEST_SHARD_JOB
from assemblage_assets.core import settings

MAX_STAGING_ROUNDS = 20  # reruns of a shard whose entries did not all fit in the staging budget


def _configured(raw: str) -> list[Any]:
    from resources import image_source

    try:
        return image_source.from_env(raw)
    except ValueError as exc:
        raise SystemExit(f"IMAGE_SOURCES: {exc}") from None


def _check(sources: Sequence[Any]) -> None:
    """Preflight every selected source once: one clear message naming the setting, no traceback."""
    from resources.image_source import SourceError

    for source in sources:
        try:
            source.preflight()
        except SourceError as exc:
            raise SystemExit(f"image source {source.uri} not usable: {exc}") from None


def select_sources(source: str | None) -> tuple[str, list[Any], list[Any]]:
    """(IMAGE_SOURCES to run with, every configured source, the selected ones). A ``--source``
    that is not configured runs alone (its keys then carry no source prefix)."""
    raw = settings.env_str("IMAGE_SOURCES") or str(settings.images_dir())
    configured = _configured(raw)
    if not source:
        return raw, configured, configured
    wanted = source.rstrip("/")
    chosen = [s for s in configured if wanted in (s.uri.rstrip("/"), s.label)]
    if chosen:
        return raw, configured, chosen
    alone = _configured(source)
    return source, alone, alone


def single_local_folder(source: str | None) -> str | None:
    """The folder when the selection is one local folder alone (today's path: its idle-shard
    check, keys without a prefix), else None."""
    _, configured, selected = select_sources(source)
    if len(configured) == 1 and selected[0].is_local:
        return selected[0].uri
    return None


def run_source_shards(
    job_name: str, source: str | None, shard_keys: Sequence[str] = (), *, verbose: bool = False,
    progress: Callable[[str], None] = print, run_config: dict[str, Any] | None = None,
) -> list[Any]:
    """Register the shards of the selected sources and run ``job_name`` per shard; a shard whose
    raw_files deferred entries (staging budget full) runs again once its staged files are published."""
    from assemblage_assets.cli.launch import QUIET_LOGGING, run_partitions
    from assemblage_assets.platform.dagster_home import ensure_dagster_home

    raw, configured, selected = select_sources(source)
    _check([s for s in selected if not s.is_local])
    os.environ["IMAGE_SOURCES"] = raw  # read by the resources when the definitions load
    ensure_dagster_home()
    import dagster as dg

    from assemblage_assets.definitions import defs
    from assemblage_assets.images.sources import shard_refs
    from assemblage_assets.partitions import IMAGE_SHARDS, add_partitions

    refs = [ref for ref in shard_refs(configured) if any(ref.source is s for s in selected)]
    known = [ref.key for ref in refs]
    keys = list(shard_keys) or sorted(known)
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise SystemExit(f"unknown shard key(s) {unknown}; shards of {', '.join(s.uri for s in selected)}: {sorted(known)}")
    instance = dg.DagsterInstance.get()
    added = add_partitions(instance, IMAGE_SHARDS, keys)
    if added:
        progress(f"registered {len(added)} new shard partition(s): {', '.join(added)}")
    config = {**(run_config or {}), **({} if verbose else QUIET_LOGGING)} or None
    job = defs.resolve_job_def(job_name)
    runs = run_partitions(job, {key: config for key in keys}, instance, progress)
    for _ in range(MAX_STAGING_ROUNDS):
        again = [r.shard for r in runs[-len(keys):] if r.success and int(r.metadata.get("deferred", 0) or 0)]
        if not again:
            break
        progress(f"{len(again)} shard(s) left entries for lack of staging room (SOURCE_STAGING_BUDGET_MB): running them again")
        keys = again
        runs += run_partitions(job, {key: config for key in keys}, instance, progress)
    return runs


def cmd_source_shards(args: argparse.Namespace) -> int:
    """``assemblage shards`` over IMAGE_SOURCES: key and location of every shard (``--register``
    adds the missing ones as partitions)."""
    import sys

    from assemblage_assets.images.sources import shard_refs

    _, configured, selected = select_sources(args.source)
    _check([s for s in selected if not s.is_local])
    refs = sorted((r for r in shard_refs(configured) if any(r.source is s for s in selected)), key=lambda r: r.key)
    if args.register:
        import dagster as dg

        from assemblage_assets.partitions import IMAGE_SHARDS, add_partitions
        from assemblage_assets.platform.dagster_home import ensure_dagster_home

        ensure_dagster_home()
        added = add_partitions(dg.DagsterInstance.get(), IMAGE_SHARDS, [r.key for r in refs])
        print(f"registered {len(added)} new shard partition(s)", file=sys.stderr)
    for ref in refs:
        print(f"{ref.key}\t{ref.display_name}")
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """The older ``process_image``: one entry of a configured bucket or Dropbox source, now."""
    from assemblage_assets.images.shards import ShardNotFoundError
    from assemblage_assets.images.sources import shard_of_entry, source_of

    raw, configured, _ = select_sources(None)
    try:
        source = source_of(configured, args.uri)
    except ShardNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    _check([source])
    ref = shard_of_entry(configured, source, args.uri)
    print(f"publishing to {check_object_store()}")
    runs = run_source_shards(
        INGEST_SHARD_JOB, source.uri, [ref.key], verbose=args.verbose,
        run_config={"ops": {"raw_files": {"config": {"only": [args.uri]}}}},
    )
    return 0 if runs and all(r.success for r in runs) else 1


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser(
        "process", help="ingest one entry of a bucket or Dropbox source now (s3://bucket/key, dropbox:/path): "
        "scan, derive, publish its shard's pending images",
    )
    p.add_argument("uri", help="the entry, under one of IMAGE_SOURCES")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_process)

"""``assemblage demo``: what ``make run`` does. Sample data if the tree is empty, ingest and embed
every shard through Dagster, one search, and the status summary."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from assemblage_assets.cli.captions import prepare_demo_captioner, run_demo_captions
from assemblage_assets.cli.common import BANNER, check_object_store, database_dsn
from assemblage_assets.cli.embeddings import cmd_search
from assemblage_assets.cli.launch import launch_embed_runs
from assemblage_assets.cli.status import collect_status, print_status
from assemblage_assets.constants import INGEST_SHARD_JOB
from assemblage_assets.core import settings


def cmd_demo(args: argparse.Namespace) -> int:
    """What ``make run`` does: sample data if needed, ingest and embed everything, summarise."""
    from assemblage_assets.cli.launch import materialize_shards
    from assemblage_assets.core import db
    from assemblage_assets.dev.sample_data import write_sample_tree
    from assemblage_assets.platform.dagster_home import ensure_dagster_home

    paths = settings.Paths.from_env()
    images_dir = Path(args.images_dir).resolve()
    dsn = database_dsn(migrate=False)
    applied = db.migrate(dsn)
    print(f"database: {db.redact(dsn)} ({'migrated: ' + ', '.join(applied) if applied else 'schema up to date'})")
    if not images_dir.exists() or not any(images_dir.iterdir()):
        tree = write_sample_tree(images_dir)
        print(f"generated sample tree: {tree.files} files in {images_dir}")
    tiny = prepare_demo_model(args.allow_tiny_model)  # before definitions read CLIP_MODEL
    tiny_blip = prepare_demo_captioner(args.allow_tiny_model)  # CAPTION_PROVIDER=blip only
    store = check_object_store()
    runs = materialize_shards(INGEST_SHARD_JOB, images_dir)
    runs += run_demo(tiny)
    runs += run_demo_captions(tiny_blip)
    print()
    print_status(collect_status())
    print()
    print(f"images:            {images_dir}")
    print(f"derivative cache:  {paths.derivative_cache} (thumbnail/, watermarked/)")
    print(f"published to:      {store} (original/, thumbnail/, watermarked/)")
    print(f"Dagster home:      {ensure_dagster_home()}")
    print("open the UI:       make ui   (then http://127.0.0.1:3000)")
    print("browse and search: .venv/bin/assemblage serve   (then http://127.0.0.1:8000)")
    print("near-duplicates:   .venv/bin/assemblage duplicates")
    return 0 if all(r.success for r in runs) else 1


def prepare_demo_model(allow_tiny: bool) -> str | None:
    """Make sure the demo can embed offline. Loads the configured CLIP model; when it cannot be
    loaded and the tiny model is allowed (flag or ``ASSEMBLAGE_DEMO_TINY_MODEL=1``), builds the
    tiny random checkpoint, points ``CLIP_MODEL`` at it and says so loudly. Returns the tiny
    model's path when it is used."""
    from assemblage_assets.dev.tiny_clip import ensure_tiny_clip
    from resources.embedding import DEFAULT_CLIP_MODEL, provider_from_env
    from resources.embedding.clip_encoder import TINY_MODEL_WARNING, ClipEncoder
    from resources.embedding.types import ProviderConfigError

    if provider_from_env() != "local_clip":
        return None
    source = settings.env_str("CLIP_MODEL", DEFAULT_CLIP_MODEL)
    try:
        ClipEncoder.load(source, device=settings.env_str("CLIP_DEVICE") or None)
        print(f"embedding model: {source}")
        return None
    except ProviderConfigError as exc:
        if not (allow_tiny or settings.env_bool("ASSEMBLAGE_DEMO_TINY_MODEL")):
            raise SystemExit(f"{exc}\n(`assemblage demo --allow-tiny-model` continues with a tiny model whose vectors carry no meaning)") from None
        reason = str(exc)
    tiny = ensure_tiny_clip(settings.Paths.from_env().home / "models")
    os.environ["CLIP_MODEL"] = str(tiny)
    print(BANNER)
    print(f"!! {reason}")
    print(f"!! DEMO ONLY: {TINY_MODEL_WARNING}")
    print(f"!! tiny model: {tiny}")
    print(BANNER)
    return str(tiny)


def run_demo(tiny: str | None) -> list[Any]:
    """The demo's embeddings runs (every shard), then one text search to show the result."""
    from resources.embedding.clip_encoder import TINY_MODEL_WARNING

    print()
    runs = launch_embed_runs()
    try:
        args = argparse.Namespace(query="orange car", like=None, k=3, model=None, json=False)
        print()
        cmd_search(args)
    except Exception as exc:  # noqa: BLE001 - the demo's search is a courtesy
        print(f"search failed: {exc}", file=sys.stderr)
    if tiny:
        print(BANNER)
        print(f"!! {TINY_MODEL_WARNING}")
        print(BANNER)
    return runs


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("demo", help="what `make run` does: sample data if empty, ingest and embed all, summary")
    p.add_argument("--images-dir", default=default_images)
    p.add_argument(
        "--allow-tiny-model", action="store_true",
        help="if the configured CLIP model (or, with CAPTION_PROVIDER=blip, the BLIP model) cannot be loaded "
        "(offline), use a tiny random model whose vectors and captions carry no meaning (also ASSEMBLAGE_DEMO_TINY_MODEL=1)",
    )
    p.set_defaults(func=cmd_demo)

"""``assemblage caption``: captions through Dagster (``caption_shard_job``) for images without a
caption of the active caption model, plus the demo's captioning step."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from assemblage_assets.cli.common import BANNER, database_dsn, fail, summarize_paid_runs
from assemblage_assets.constants import CAPTION_SHARD_JOB
from assemblage_assets.core import settings
from assemblage_assets.platform.dagster_home import ensure_dagster_home


def launch_caption_runs(shard: str | None = None, *, limit: int = 0, verbose: bool = False,
                        progress: Any = print) -> list[Any]:
    """One in-process ``caption_shard_job`` run per shard with images missing a caption, in the
    instance the UI reads; ``limit`` is shared by all of them."""
    from assemblage_assets.cli.launch import run_shards_with_limit
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import caption_queue
    from resources import caption
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    ensure_dagster_home()
    from assemblage_assets.definitions import defs

    provider = caption.from_env()
    with db.connect(database_dsn()) as conn:
        shards = caption_queue.shards_missing_captions(conn, provider.model_id)
    shards = [s for s in shards if s == shard] if shard else shards
    resources = {"caption": provider, "library": ImageLibraryResource.from_env(), "database": PostgresResource()}
    return run_shards_with_limit(defs.resolve_job_def(CAPTION_SHARD_JOB), "captions", "captioned", shards, resources,
                                 limit=limit, verbose=verbose, progress=progress)


def cmd_caption(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import caption_queue
    from resources import caption

    try:
        provider = caption.from_env()
    except ValueError as exc:
        return fail(str(exc))
    if not provider.enabled:
        return fail("CAPTION_PROVIDER is not set (or 'none'): set blip, openai or replicate (see README)")
    model = provider.model_id
    with db.connect(database_dsn()) as conn:
        if args.reset_errors:
            n = caption_queue.reset_errors(conn, None if args.all_models else model)
            print(f"reset {n} errored image(s){'' if args.all_models else f' for {model}'}: they are captioned by the next run")
            return 0
        pending = caption_queue.count_missing(conn, args.shard, model)
    limit = args.limit if args.limit is not None else settings.env_int("CAPTION_LIMIT", 0)
    todo = min(pending, limit) if limit else pending
    per_image = provider.estimate_cost_per_image()
    if args.estimate:
        print(json.dumps({"model": model, "provider": provider.provider_name, "images": todo,
                          "estimated_cost_usd": round(todo * per_image, 6), "per_image_usd": per_image})
              if args.json else
              f"{todo:,} image(s) to caption with {provider.describe()}: estimated ${todo * per_image:,.4f} "
              f"(${per_image:.6f} per image; nothing was spent)")
        return 0
    if not todo:
        print(f"nothing to caption: every derived image has a caption of {model}")
        return 0
    print(f"captioning {todo:,} image(s) with {provider.describe()} (estimated ${todo * per_image:,.4f})")
    return summarize_paid_runs(launch_caption_runs(args.shard, limit=limit, verbose=args.verbose), "captioned")


def prepare_demo_captioner(allow_tiny: bool) -> str | None:
    """With ``CAPTION_PROVIDER=blip``: load the configured BLIP; when it cannot be loaded and the
    tiny model is allowed, build the tiny random BLIP, point ``BLIP_MODEL`` at it and say so
    loudly. Returns the tiny model's path when it is used."""
    from assemblage_assets.dev.tiny_blip import ensure_tiny_blip
    from resources import caption
    from resources.embedding.types import ProviderConfigError

    provider = caption.from_env()
    if not isinstance(provider, caption.BlipCaptions):
        return None
    try:
        provider.load()
        print(f"caption model: {provider.source}")
        return None
    except ProviderConfigError as exc:
        if not (allow_tiny or settings.env_bool("ASSEMBLAGE_DEMO_TINY_MODEL")):
            raise SystemExit(f"{exc}\n(`assemblage demo --allow-tiny-model` continues with a tiny BLIP whose captions carry no meaning)") from None
        reason = str(exc)
    tiny = ensure_tiny_blip(settings.Paths.from_env().home / "models")
    os.environ["BLIP_MODEL"] = str(tiny)
    print(BANNER)
    print(f"!! {reason}")
    print(f"!! DEMO ONLY: {caption.TINY_BLIP_WARNING}")
    print(f"!! tiny caption model: {tiny}")
    print(BANNER)
    return str(tiny)


def run_demo_captions(tiny: str | None) -> list[Any]:
    """The demo's caption runs (every shard) when a caption provider is configured."""
    from resources import caption

    if not caption.provider_class().enabled:
        print("captions: off (CAPTION_PROVIDER=none; set blip, openai or replicate)")
        return []
    print()
    runs = launch_caption_runs()
    if tiny:
        print(BANNER)
        print(f"!! {caption.TINY_BLIP_WARNING}")
        print(BANNER)
    return runs


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("caption", help="captions through Dagster (caption_shard_job) for images without one")
    p.add_argument("--limit", type=int, metavar="N", help="caption at most N images (default: CAPTION_LIMIT or all)")
    p.add_argument("--shard", metavar="KEY", help="only this shard")
    p.add_argument("--estimate", action="store_true", help="print how many images and the expected cost; spend nothing")
    p.add_argument("--reset-errors", action="store_true", help="put images errored after 3 retries back in line")
    p.add_argument("--all-models", action="store_true", help="with --reset-errors: for every caption model")
    p.add_argument("--json", action="store_true", help="with --estimate: one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_caption)

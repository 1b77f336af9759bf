"""``assemblage embed|search|provider-test``: vectors through Dagster, nearest images, one paid call."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from assemblage_assets.cli.common import configured_provider, database_dsn, fail, summarize_paid_runs
from assemblage_assets.cli.launch import launch_embed_runs
from assemblage_assets.core import settings


def cmd_embed(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import retry_queue
    from assemblage_assets.embeddings.candidates import count_candidates
    from resources.embedding.types import ProviderConfigError

    try:
        provider = configured_provider(load=not (args.estimate or args.reset_errors))
        if args.reembed:
            return _reembed(provider, args)
    except (ProviderConfigError, ValueError) as exc:
        return fail(str(exc))
    model = provider.model_id
    dsn = database_dsn()
    with db.connect(dsn) as conn:
        if args.reset_errors:
            n = retry_queue.reset_errors(conn, None if args.all_models else model)
            print(f"reset {n} errored image(s){'' if args.all_models else f' for {model}'}: they are embedded by the next run")
            return 0
        pending = count_candidates(conn, args.shard, model)
    limit = args.limit if args.limit is not None else settings.env_int("EMBED_LIMIT", 0)
    todo = min(pending, limit) if limit else pending
    per_image = provider.estimate_cost_per_image()
    if args.estimate:
        print(json.dumps({"model": model, "provider": provider.provider_name, "images": todo,
                          "estimated_cost_usd": round(todo * per_image, 6), "per_image_usd": per_image})
              if args.json else
              f"{todo:,} image(s) to embed with {provider.provider_name} {model}"
              f"{f' (limit {limit:,} of {pending:,})' if limit and pending > limit else ''}: "
              f"estimated ${todo * per_image:,.4f} (${per_image:.6f} per image; nothing was spent)")
        return 0
    if not todo:
        print(f"nothing to embed: every processed image has a vector for {model}")
        return 0
    print(f"embedding {todo:,} image(s) with {provider.describe()} (estimated ${todo * per_image:,.4f})")
    return summarize_paid_runs(launch_embed_runs(args.shard, limit=limit, verbose=args.verbose), "embedded")


def _reembed(provider: Any, args: argparse.Namespace) -> int:
    """In this process (no Dagster run): a maintenance pass over vectors already stored."""
    from assemblage_assets.core import db
    from assemblage_assets.embeddings.reembed import count_stale, reembed

    backend = provider.vector_backend
    if backend is None:
        return fail(f"--reembed redoes local CLIP vectors; {provider.provider_name} has no backend choice")
    limit = args.limit or 0
    with db.connect(database_dsn()) as conn:
        stale = count_stale(conn, provider.model_id, backend, args.shard)
        if args.estimate or not stale:
            print(f"{stale:,} vector(s) of {provider.model_id} were computed by another backend than {backend}"
                  + ("" if stale else ": nothing to redo"))
            return 0
        print(f"re-embedding {min(stale, limit) if limit else stale:,} vector(s) of {provider.model_id} with {backend}")
        report = reembed(conn, provider, settings.Paths.from_env().derivative_cache, shard=args.shard, limit=limit,
                         progress=lambda line: print(line, flush=True))
    print(f"{report.redone:,} vector(s) now {backend}, {report.failed:,} failed "
          f"({', '.join(f'{k} {v}' for k, v in report.errors.items()) or 'none'}; they keep their old vector) "
          f"in {report.seconds:.1f}s")
    return 1 if report.failed else 0


def cmd_provider_test(args: argparse.Namespace) -> int:
    """One call: credentials, model and dimension, like the older loader's provider check. A paid
    call takes its slots of the shared rate limit and is logged (``text_calls``)."""
    from assemblage_assets.core import db
    from assemblage_assets.dev.sample_data import make_photo
    from assemblage_assets.embeddings import text_calls
    from resources.embedding.types import EmbeddingError, EmbedItem

    try:
        provider = configured_provider()
        if not provider.paid:
            provider.check_dimension()
    except (EmbeddingError, ValueError) as exc:
        return fail(f"provider not usable: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "provider-test.jpg"
        make_photo(640, 480, seed=7).save(path, "JPEG", quality=90)
        started = time.perf_counter()
        item = EmbedItem("00000000-0000-0000-0000-000000000000", str(path))
        try:
            if provider.paid:  # the database only for a paid call: its slots and its cost row
                dsn = database_dsn()
                with db.connect(dsn) as conn:
                    outcome = text_calls.embed_image(conn, provider, item, purpose="provider-test", dsn=dsn)
            else:
                outcome = provider.embed_image(item)
        except text_calls.CallRefused as exc:
            return fail(str(exc))
        except EmbeddingError as exc:  # a paid but unusable answer is logged by text_calls
            return fail(f"{provider.provider_name} call failed ({exc.kind}): {exc}")
        seconds = time.perf_counter() - started
    dim = int(outcome.vector.shape[0])
    expected = provider.expected_vector_dim or provider.dim
    print(f"provider:  {provider.provider_name}")
    print(f"model:     {provider.model_id}")
    print(f"dimension: {dim} (expected {expected})")
    print(f"call:      {seconds:.2f}s" + (f", ${outcome.usage.cost_usd:.6f}" if outcome.usage else ", free"))
    if dim != expected:
        return fail(f"{provider.provider_name} returned {dim}-d vectors, expected {expected}")
    print("ok")
    return 0


def _search_provider(model: dict[str, Any], active: Any) -> Any:
    from resources.embedding import LocalClipEmbedding

    if active is not None and active.model_id == model["model"]:
        return active
    if model["provider"] == "local_clip" and model.get("source"):
        return LocalClipEmbedding(clip_model=model["source"])
    return None


def cmd_search(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings.search import SearchError, pick_model, search_like, search_text
    from resources.embedding.types import EmbeddingError

    if not args.query and not args.like:
        return fail("give a text query or --like IMAGE_ID_OR_PATH")
    try:
        active = configured_provider()
    except (EmbeddingError, ValueError):
        active = None
    dsn = database_dsn()
    with db.connect(dsn) as conn:
        try:
            model = pick_model(conn, args.model, active.model_id if active else None)
            provider = _search_provider(model, active)
            if args.like:
                anchor, hits = search_like(conn, provider, model, args.like, args.k, dsn=dsn)
            else:
                anchor = None
                hits = search_text(conn, provider, model, args.query, args.k, dsn=dsn)
        except (SearchError, EmbeddingError) as exc:  # text_calls.CallRefused: the shared limit is full
            return fail(str(exc))
    from resources.embedding.clip_encoder import TINY_MODEL_WARNING, is_random_checkpoint

    if model.get("source") and is_random_checkpoint(model["source"]):
        print(f"WARNING: {TINY_MODEL_WARNING}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": model["model"], "like": anchor, "results": hits}, indent=2, default=str))
        return 0
    what = f"like {args.like}" if args.like else repr(args.query)
    print(f"{len(hits)} nearest image(s) {what} ({model['model']}, cosine distance):")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:3d}  {hit['distance']:.4f}  {hit['image_id']}  {hit['path']}")
        urls = [u for u in (hit.get("thumbnail_url"), hit.get("preview_url")) if u]
        if urls:
            print(f"            {'  '.join(urls)}")
    return 0


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("embed", help="embeddings through Dagster (embed_shard_job) for images missing a vector")
    p.add_argument("--limit", type=int, metavar="N", help="embed at most N images (default: EMBED_LIMIT or all)")
    p.add_argument("--shard", metavar="KEY", help="only this shard")
    p.add_argument("--estimate", action="store_true", help="print how many images and the expected cost; spend nothing")
    p.add_argument("--reset-errors", action="store_true", help="put images errored after 3 retries back in line")
    p.add_argument("--all-models", action="store_true", help="with --reset-errors: for every model, not just the active one")
    p.add_argument("--reembed", action="store_true",
                   help="redo the active model's vectors that another CLIP backend computed (CLIP_BACKEND/CLIP_PRECISION); "
                        "resumable, only rows whose backend differs")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own logs")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help='nearest images: `search "orange car"` or `search --like IMAGE_ID_OR_PATH`')
    p.add_argument("query", nargs="?", help="text to search for")
    p.add_argument("--like", metavar="IMAGE_ID_OR_PATH", help="images like this one (id, ingested path or any image file)")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--model", help="model id (default: the active one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("provider-test", help="one call to the configured embedding provider: credentials and dimension")
    p.set_defaults(func=cmd_provider_test)

"""The embedding commands of ``assemblage``: ``embed``, ``search``, ``provider-test``, the
embedding part of ``status`` and of ``demo``. Wired into ``cli.py`` by ``add_commands``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from assemblage_assets.core import settings

BANNER = "!" * 100


def _dsn() -> str:
    from assemblage_assets.core import db

    dsn = db.resolve_dsn()
    db.migrate(dsn)
    return dsn


def _provider(*, load: bool = False) -> Any:
    """The configured provider (plain values, no Dagster); ``load``: fail now if unusable."""
    from resources import embedding

    provider = embedding.from_env()
    if load:
        if isinstance(provider, embedding.LocalClipEmbedding):
            provider.load()
        else:
            provider.client()
    return provider


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- embed


def cmd_embed(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import retry_queue
    from assemblage_assets.embeddings.embed import count_candidates
    from resources.embedding.types import ProviderConfigError

    try:
        provider = _provider(load=not (args.estimate or args.reset_errors))
    except (ProviderConfigError, ValueError) as exc:
        return _fail(str(exc))
    model = provider.model_id
    dsn = _dsn()
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
    runs = launch_embed_runs(args.shard, limit=limit, verbose=args.verbose)
    failed = [r for r in runs if not r.success]
    embedded = sum(int(r.metadata.get("embedded", 0) or 0) for r in runs)
    cost = sum(float(r.metadata.get("cost_usd", 0) or 0) for r in runs)
    print(f"{len(runs) - len(failed)}/{len(runs)} shard run(s) succeeded; {embedded:,} image(s) embedded; ${cost:.4f} spent")
    for r in failed:
        print(f"  {r.shard}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def launch_embed_runs(
    shard: str | None = None, *, limit: int = 0, verbose: bool = False, progress: Any = print
) -> list[Any]:
    """One in-process ``embed_shard_job`` run per shard with missing vectors, in the instance the
    UI reads; ``limit`` is shared by all of them (each run gets what the previous ones left).
    Resources are built from the environment now, not when the definitions were first imported."""
    import dagster as dg

    from assemblage_assets.cli.launch import QUIET_LOGGING, run_partition
    from assemblage_assets.core import db
    from assemblage_assets.embeddings.sensors import shards_missing_embeddings
    from assemblage_assets.partitions import IMAGE_SHARDS
    from resources import embedding
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    settings.ensure_dagster_home()
    from assemblage_assets.definitions import defs

    provider = embedding.from_env()
    with db.connect(_dsn()) as conn:
        shards = shards_missing_embeddings(conn, provider.model_id)
    if shard:
        shards = [s for s in shards if s == shard]
    instance = dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(IMAGE_SHARDS))
    new = [s for s in shards if s not in known]
    if new:
        instance.add_dynamic_partitions(IMAGE_SHARDS, new)
    job = defs.resolve_job_def("embed_shard_job")
    resources = {"embedding": provider, "library": ImageLibraryResource.from_env(), "database": PostgresResource()}
    runs, remaining = [], limit
    for index, key in enumerate(shards, 1):
        if limit and remaining <= 0:
            break
        run_config: dict[str, Any] = {} if verbose else dict(QUIET_LOGGING)
        if limit:
            run_config["ops"] = {"embeddings": {"config": {"limit": remaining}}}
        run = run_partition(job, key, instance, run_config or None, resources)
        metadata = run.metadata
        runs.append(run)
        state = f"{metadata.get('embedded', 0)} embedded" if run.success else f"FAILED: {run.error}"
        progress(f"[{index}/{len(shards)}] embed_shard_job {key}: {state} ({run.seconds:.1f}s, run {run.run_id[:8]})")
        remaining -= int(metadata.get("embedded", 0) or 0) + int(metadata.get("failed", 0) or 0)
    return runs


# --------------------------------------------------------------------------- provider-test


def cmd_provider_test(args: argparse.Namespace) -> int:
    """One call: credentials, model and dimension, like the older loader's provider check."""
    from assemblage_assets.dev.sample_data import make_photo
    from resources.embedding.types import EmbeddingError, EmbedItem

    try:
        provider = _provider()
        if not provider.paid:
            provider.check_dimension()
    except (EmbeddingError, ValueError) as exc:
        return _fail(f"provider not usable: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "provider-test.jpg"
        make_photo(640, 480, seed=7).save(path, "JPEG", quality=90)
        started = time.perf_counter()
        try:
            outcome = provider.embed_image(EmbedItem("00000000-0000-0000-0000-000000000000", str(path)))
        except EmbeddingError as exc:
            if exc.usage is not None:
                _log_test_usage(provider, exc.usage, ok=False)
            return _fail(f"{provider.provider_name} call failed ({exc.kind}): {exc}")
        seconds = time.perf_counter() - started
    if outcome.usage is not None:
        _log_test_usage(provider, outcome.usage, ok=True)
    dim = int(outcome.vector.shape[0])
    expected = provider.expected_vector_dim or provider.dim
    print(f"provider:  {provider.provider_name}")
    print(f"model:     {provider.model_id}")
    print(f"dimension: {dim} (expected {expected})")
    print(f"call:      {seconds:.2f}s" + (f", ${outcome.usage.cost_usd:.6f}" if outcome.usage else ", free"))
    if dim != expected:
        return _fail(f"{provider.provider_name} returned {dim}-d vectors, expected {expected}")
    print("ok")
    return 0


def _log_test_usage(provider: Any, usage: Any, *, ok: bool) -> None:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings.usage_log import UsageRow, log_usage

    with db.connect(_dsn()) as conn:
        log_usage(conn, [UsageRow(provider.provider_name, provider.model_id, None, usage, purpose="provider-test", ok=ok)])


# --------------------------------------------------------------------------- search


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
    from assemblage_assets.embeddings.usage_log import UsageRow, log_usage
    from resources.embedding.types import EmbeddingError

    if not args.query and not args.like:
        return _fail("give a text query or --like IMAGE_ID_OR_PATH")
    try:
        active = _provider()
    except (EmbeddingError, ValueError):
        active = None
    with db.connect(_dsn()) as conn:
        try:
            model = pick_model(conn, args.model, active.model_id if active else None)
            provider = _search_provider(model, active)
            usage = None
            if args.like:
                anchor, hits = search_like(conn, provider, model, args.like, args.k)
            else:
                anchor = None
                hits, usage = search_text(conn, provider, model, args.query, args.k)
        except (SearchError, EmbeddingError) as exc:
            return _fail(str(exc))
        if usage is not None:
            log_usage(conn, [UsageRow(provider.provider_name, model["model"], None, usage, purpose="text")])
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


# --------------------------------------------------------------------------- status and demo


def status(conn: Any) -> dict[str, Any]:
    """The embedding part of ``assemblage status``."""
    from assemblage_assets.embeddings import retry_queue
    from assemblage_assets.embeddings.embed import count_candidates
    from assemblage_assets.embeddings.search import stored_models
    from assemblage_assets.embeddings.usage_log import cost_summary

    try:
        from resources.embedding import from_env

        provider = from_env()
        active, provider_name = provider.model_id, provider.provider_name
    except ValueError as exc:
        active, provider_name = None, f"invalid: {exc}"
    return {
        "provider": provider_name,
        "active_model": active,
        "models": stored_models(conn),
        "missing": count_candidates(conn, None, active) if active else None,
        "queue": retry_queue.queue_counts(conn, active),
        "errored": retry_queue.errored(conn, active, 10),
        "cost": cost_summary(conn),
    }


def print_status(st: dict[str, Any] | None) -> None:
    if not st:
        return
    print(f"embeddings: provider {st['provider']}, active model {st['active_model']}")
    for m in st["models"]:
        print(f"  {m['model']}: {m['vectors']} vector(s), {m['dim']}-d ({m['provider']})")
    q = st["queue"]
    print(f"  missing for the active model: {st['missing']}; retry queue: {q['retry']} ({q['retry_due']} due); "
          f"errored: {q['errored']}")
    for row in st["errored"]:
        print(f"    [errored:{row['error_kind']}] {row['local_path'] or row['image_id']}: {row['last_error']}")
    cost = st["cost"]
    print(f"  embedding cost: ${cost['total_usd']:.4f} in total")
    for row in cost["by_model"]:
        print(f"    {row['provider']} {row['model']}: {row['calls']} call(s), ${row['cost_usd']:.4f}")
    for row in cost["recent_runs"]:
        print(f"    run {row['run_id'][:8]}: {row['calls']} call(s), ${row['cost_usd']:.4f} ({row['model']})")


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


# --------------------------------------------------------------------------- parser


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("embed", help="embeddings through Dagster (embed_shard_job) for images missing a vector")
    p.add_argument("--limit", type=int, metavar="N", help="embed at most N images (default: EMBED_LIMIT or all)")
    p.add_argument("--shard", metavar="KEY", help="only this shard")
    p.add_argument("--estimate", action="store_true", help="print how many images and the expected cost; spend nothing")
    p.add_argument("--reset-errors", action="store_true", help="put images errored after 3 retries back in line")
    p.add_argument("--all-models", action="store_true", help="with --reset-errors: for every model, not just the active one")
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

"""What every command shares: the database, the configured provider and object store, errors."""

from __future__ import annotations

import argparse
import sys
from typing import Any

BANNER = "!" * 100


def database_dsn(*, migrate: bool = True) -> str:
    """The DSN in use (starting the embedded server if needed), migrated unless told otherwise."""
    from assemblage_assets.core import db

    dsn = db.resolve_dsn()
    if migrate:
        db.migrate(dsn)
    return dsn


def configured_provider(*, load: bool = False) -> Any:
    """The embedding provider of the environment (plain values, no Dagster); ``load``: fail now
    if it cannot be used (model missing, no credentials)."""
    from resources import embedding

    provider = embedding.from_env()
    if load:
        if isinstance(provider, embedding.LocalClipEmbedding):
            provider.load()
        else:
            provider.client()
    return provider


def check_object_store() -> str:
    """Preflight the configured object store once, before any run; returns where it publishes.

    Raises ``SystemExit`` with one clear message (naming the setting, never a secret) when the
    credentials, bucket or endpoint are wrong.
    """
    from resources import object_store

    try:
        # Resolves the EnvVar-held secrets the way a Dagster run does.
        with object_store.from_env().process_config_and_initialize_cm() as store:
            store.preflight()
            return store.describe()
    except object_store.ObjectStoreError as exc:
        raise SystemExit(f"object store not usable: {exc}") from None


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def summarize_paid_runs(runs: list[Any], done_key: str) -> int:
    """Print what a set of embed or caption shard runs did and spent (failures on stderr); the exit code."""
    failed = [r for r in runs if not r.success]
    done = sum(int(r.metadata.get(done_key, 0) or 0) for r in runs)
    cost = sum(float(r.metadata.get("cost_usd", 0) or 0) for r in runs)
    print(f"{len(runs) - len(failed)}/{len(runs)} shard run(s) succeeded; {done:,} image(s) {done_key}; ${cost:.4f} spent")
    for r in failed:
        print(f"  {r.shard}: {r.error}", file=sys.stderr)
    return 1 if failed else 0

"""Which shards a run would have work in, found before any run starts.

A Dagster run costs a few hundred milliseconds before its first step does anything; over 5,000
unchanged shards that is most of a no-op rescan. ``plan`` reads the same things the stages would
(a walk compared in the database, the statuses waiting for a stage, the store's last full
check) and writes nothing, so the CLI launches runs only where something changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from assemblage_assets.images import hash_backfill, rescan, verification
from assemblage_assets.images.scan import iter_shard_stats
from assemblage_assets.images.shards import discover_shards, resolve_shard
from resources.object_store import ObjectStore


@dataclass(frozen=True)
class ShardPlan:
    shard: str
    idle: bool
    reason: str  # what there is to do, or why there is nothing


def plan_ingest(
    conn: psycopg.Connection, images_dir: Path, shards: Iterable[str], store: ObjectStore
) -> Iterator[ShardPlan]:
    """Per shard: idle when the scan finds nothing new, changed or deleted, nothing waits for
    derivatives or publishing, the store was fully checked since the shard's last upload, and no
    image derived before perceptual hashes existed waits for them (``hash_backfill.has_work``)."""
    on_disk = {shard.key: shard for shard in discover_shards(images_dir)}  # once: resolve_shard walks the root
    for key in shards:
        shard = on_disk.get(key) or resolve_shard(images_dir, key)
        work = rescan.shard_work(conn, key, lambda shard=shard: iter_shard_stats(shard))
        if not work.idle:
            yield ShardPlan(key, False, work.describe())
            continue
        state = verification.settlement(conn, key, store)
        if state.settled and hash_backfill.has_work(conn, key):  # derived before hashes existed: duplicates fills them
            yield ShardPlan(key, False, f"{work.describe()}; images without perceptual hashes or ThumbHash")
            continue
        yield ShardPlan(key, state.settled, f"{work.describe()}; {state.reason}")


def plan_publish(conn: psycopg.Connection, shards: Iterable[str], store: ObjectStore) -> Iterator[ShardPlan]:
    """Per shard: idle when ``r2_objects`` would find it settled (``images.verification``)."""
    for key in shards:
        state = verification.settlement(conn, key, store)
        yield ShardPlan(key, state.settled, state.reason)

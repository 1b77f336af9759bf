"""``duplicates``: near-duplicate groups across the catalogue, kept current shard by shard."""

from typing import Any

import dagster as dg

from assemblage_assets.core.metadata import failures_table, md_table, stage_metadata
from assemblage_assets.core.reports import StageReport
from assemblage_assets.duplicates import listing
from assemblage_assets.duplicates.config import DuplicateSettings
from assemblage_assets.duplicates.stage import group_shard
from assemblage_assets.images.assets import derivatives
from assemblage_assets.images.hash_backfill import backfill_shard
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.platform.celery_queues import cpu_op_tags
from resources.database import PostgresResource
from resources.embedding import active_model_id
from resources.image_library import ImageLibraryResource
from resources.object_store import ObjectStore


@dg.asset(
    partitions_def=image_shards_partitions_def,
    deps=[derivatives],
    group_name="images",
    kinds={"python", "postgres"},
    op_tags=cpu_op_tags(),
    check_specs=[
        dg.AssetCheckSpec("duplicate_count", asset="duplicates",
                          description="The shard's near-duplicates (grouped images that are not their group's "
                          "representative) and skipped paths; fails if a skipped path has nothing kept in its place."),
    ],
)
def duplicates(
    context: dg.AssetExecutionContext, database: PostgresResource, library: ImageLibraryResource,
    object_store: ObjectStore,
) -> dg.MaterializeResult:
    """Near-duplicates of the shard's newly derived images among every image checked before, in any
    shard: pHash (and dHash) Hamming distance through banded hash indexes, confirmed by CLIP cosine
    distance where both images have a vector of the active model. Groups persist in
    ``duplicate_groups``/``duplicate_members``; with SKIP_NEAR_DUPLICATES=1 a near-duplicate of a
    published image is recorded as ``duplicate`` and neither published nor embedded.
    Images derived before hashes existed get their pHash, dHash and ThumbHash first (from the
    original, else the stored thumbnail), so an existing catalogue is grouped too.
    Thresholds: DUPLICATE_PHASH_DISTANCE, DUPLICATE_DHASH_DISTANCE, DUPLICATE_CLIP_DISTANCE."""
    config = DuplicateSettings.from_env()
    model = _active_model(context)
    with database.connect() as conn:
        backfill = backfill_shard(
            conn, context.partition_key, cache_dir=library.cache, spec=library.derivative_spec(),
            read_store=lambda key: object_store.read("public", key), store_key=object_store.key,
            staging_dir=library.staging, workers=library.derive_workers, progress=context.log.info,
        )
        report = group_shard(conn, context.partition_key, config=config, model=model, progress=context.log.info)
        counts = listing.shard_counts(conn, context.partition_key)
        orphans = listing.orphan_skips(conn, context.partition_key)
        shown = listing.list_groups(conn, context.partition_key, limit=10)
    check = dg.AssetCheckResult(
        check_name="duplicate_count",
        passed=orphans == 0,
        metadata={**{k: dg.MetadataValue.int(v) for k, v in counts.items()}, "skipped_without_kept": orphans},
    )
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(report, "checked"),
            **_backfill_metadata(backfill),
            **{f"shard_{k}": dg.MetadataValue.int(v) for k, v in counts.items()},
            "thresholds": dg.MetadataValue.json({"phash": config.phash_distance, "dhash": config.dhash_distance,
                                                 "clip_cosine": config.clip_distance, "clip_model": model}),
            "skip_near_duplicates": dg.MetadataValue.bool(config.skip),
            "groups": dg.MetadataValue.md(_groups_table(shown)),
        },
        check_results=[check],
    )


def _backfill_metadata(backfill: StageReport) -> dict[str, Any]:
    meta: dict[str, Any] = {f"hashes_{k}": dg.MetadataValue.int(v) for k, v in sorted(backfill.counts.items())}
    if backfill.failures:
        meta["hash_backfill_failures"] = dg.MetadataValue.md(failures_table(backfill))
    return meta


def _active_model(context: dg.AssetExecutionContext) -> str | None:
    try:
        return active_model_id()
    except ValueError as exc:  # a bad EMBEDDING_PROVIDER: group on the hashes alone
        context.log.warning(f"no CLIP confirmation of near-duplicates: {exc}")
        return None


def _groups_table(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "No near-duplicates in this shard."
    rows = [(g["group"], len(g["images"]), f"`{g['images'][0]['path']}`",
             ", ".join(f"`{i['path']}` ({i['distance']})" for i in g["images"][1:4])) for g in groups]
    return md_table(("group", "images", "representative", "others (pHash distance)"), rows)

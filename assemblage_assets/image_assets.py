"""``raw_files`` and ``derivatives``: the first two stages of every directory shard."""


import dagster as dg

from assemblage_assets import catalog
from assemblage_assets.ingest import derive_shard, scan_shard
from assemblage_assets.metadata import palette_table, stage_metadata
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.queues import cpu_op_tags
from assemblage_assets.shards import resolve_shard
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource


@dg.asset(
    partitions_def=image_shards_partitions_def,
    group_name="images",
    kinds={"python", "postgres"},
    op_tags=cpu_op_tags(),
)
def raw_files(
    context: dg.AssetExecutionContext, database: PostgresResource, library: ImageLibraryResource
) -> dg.MaterializeResult:
    """Every file of the shard, validated and described: format (from magic bytes), size,
    content hash, deterministic image id and EXIF. New or changed files only; unchanged
    files are skipped, broken ones are recorded as failed with the reason."""
    shard = resolve_shard(library.root, context.partition_key)
    with database.connect() as conn:
        report = scan_shard(conn, shard, max_pixels=library.max_image_pixels, progress=context.log.info)
        counts = catalog.status_counts(conn, shard.key)
    context.log.info(
        f"shard {shard.key}: {report.counts['seen']} files, {report.counts['new']} new, "
        f"{report.counts['failed']} failed, {report.counts['rejected']} rejected"
    )
    return dg.MaterializeResult(
        metadata={
            "shard_dir": dg.MetadataValue.path(str(shard.path)),
            **stage_metadata(report, "seen"),
            "status_counts": dg.MetadataValue.json(counts),
        }
    )


@dg.asset(
    partitions_def=image_shards_partitions_def,
    deps=[raw_files],
    group_name="images",
    kinds={"python", "pillow"},
    op_tags=cpu_op_tags(),
)
def derivatives(
    context: dg.AssetExecutionContext, database: PostgresResource, library: ImageLibraryResource
) -> dg.MaterializeResult:
    """Thumbnail (WebP, within 300×300), watermarked preview (JPEG, long edge 1200) and a
    5-colour palette for every pending image of the shard, decoded once, upright per EXIF.
    Written to the derivative cache for ``r2_objects`` to publish."""
    with database.connect() as conn:
        report = derive_shard(
            conn,
            context.partition_key,
            cache_dir=library.cache,
            spec=library.derivative_spec(),
            workers=library.derive_workers,
            progress=context.log.info,
        )
        samples = catalog.derived_samples(conn, context.partition_key)
        counts = catalog.status_counts(conn, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(report, "processed"),
            "derivative_cache": dg.MetadataValue.path(str(library.cache)),
            "status_counts": dg.MetadataValue.json(counts),
            "samples": dg.MetadataValue.md(palette_table(samples)),
        }
    )

"""``r2_objects``: the third stage of every directory shard, publishing to the object store."""

import dagster as dg

from assemblage_assets import catalog
from assemblage_assets.image_assets import derivatives
from assemblage_assets.metadata import stage_metadata
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.publish import RATE_KEY, publish_shard
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource
from resources.object_store import ObjectStore, StoreConfigError, TransientStoreError


@dg.asset(
    partitions_def=image_shards_partitions_def,
    deps=[derivatives],
    group_name="images",
    kinds={"s3"},
    pool="r2",
    # Whole-step retries for outages longer than the client's own retries; a rerun only
    # uploads what is still missing.
    retry_policy=dg.RetryPolicy(
        max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
)
def r2_objects(
    context: dg.AssetExecutionContext,
    database: PostgresResource,
    library: ImageLibraryResource,
    object_store: ObjectStore,
) -> dg.MaterializeResult:
    """Every processed image of the shard in the object store (Cloudflare R2, S3, MinIO or the
    local directory): the original (private) at ``original/{yyyy}/{mm}/{id}.{ext}``, the
    thumbnail at ``thumbnail/{id}.webp`` and the watermarked preview at ``watermarked/{id}.jpg``.
    Objects already stored are skipped; an image becomes ``uploaded`` once all three are."""
    try:
        object_store.preflight()
    except StoreConfigError as exc:
        raise dg.Failure(description=f"object store not usable: {exc}", allow_retries=False) from None
    except TransientStoreError as exc:
        raise dg.Failure(description=f"object store unavailable: {exc}") from None
    context.log.info(f"publishing shard {context.partition_key} to {object_store.describe()}")
    before = object_store.request_counts()
    with database.connect() as conn:
        try:
            report = publish_shard(
                conn,
                context.partition_key,
                store=object_store,
                cache_dir=library.cache,
                progress=context.log.info,
            )
        except StoreConfigError as exc:
            raise dg.Failure(description=f"object store rejected the upload: {exc}", allow_retries=False) from None
        counts = catalog.status_counts(conn, context.partition_key)
    metadata = {
        **stage_metadata(report, RATE_KEY),
        "object_store": dg.MetadataValue.text(object_store.describe()),
        "requests": dg.MetadataValue.json(
            {op: n - before.get(op, 0) for op, n in object_store.request_counts().items() if n > before.get(op, 0)}
        ),
        "status_counts": dg.MetadataValue.json(counts),
    }
    if report.counts["images_deferred"]:
        # Leaves no materialization: the retry (or the next run) publishes what is left.
        raise dg.Failure(
            description=f"{report.counts['images_deferred']} image(s) hit transient store errors "
            "after the client's retries; they stay 'processed' for the next attempt",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)

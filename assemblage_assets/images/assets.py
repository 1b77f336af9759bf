"""The three stages of every directory shard: ``raw_files`` (scan), ``derivatives`` and
``r2_objects`` (publish, with its two asset checks). Each asset calls one plain stage function."""

from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from assemblage_assets.core import settings
from assemblage_assets.core.browse import shard_browse_url
from assemblage_assets.core.metadata import md_table, stage_metadata
from assemblage_assets.images import catalog_reports, checks, places, staging, verification
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import RATE_KEY, publish_shard
from assemblage_assets.images.remote_scan import scan_ref
from assemblage_assets.images.sources import resolve as resolve_source_shard
from assemblage_assets.images.sources import server_side_copies
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.platform.celery_queues import cpu_op_tags
from resources.database import PostgresResource
from resources.embedding import active_model_id
from resources.image_library import ImageLibraryResource
from resources.image_source import SourceConfigError
from resources.object_store import ObjectStore, StoreConfigError


class RawFilesConfig(dg.Config):
    only: list[str] = Field(
        default_factory=list,
        description="Entry URIs of a remote shard to process now (assemblage process); empty: the whole shard.",
    )


@dg.asset(
    partitions_def=image_shards_partitions_def,
    group_name="images",
    kinds={"python", "postgres"},
    op_tags=cpu_op_tags(),
    # a database crash mid-scan (the embedded server is restarted by the next connection) or a
    # source hiccup: the retry rescans, skipping what was already recorded
    retry_policy=dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def raw_files(
    context: dg.AssetExecutionContext, config: RawFilesConfig, database: PostgresResource, library: ImageLibraryResource
) -> dg.MaterializeResult:
    """Every file of the shard, validated and described: format (from magic bytes), size,
    content hash, deterministic image id and EXIF. New or changed files only; unchanged
    files are skipped, broken ones are recorded as failed with the reason. A shard of a bucket
    or Dropbox source is listed page by page and only new or changed entries are downloaded
    (into the staging folder)."""
    try:
        shard = resolve_source_shard(library.sources(), context.partition_key)
        with database.connect() as conn:
            report = scan_ref(conn, shard, library, only=config.only, progress=context.log.info)
            counts = catalog_reports.status_counts(conn, shard.key)
    except SourceConfigError as exc:  # wrong credentials, bucket or folder: no retry can help
        raise dg.Failure(description=f"image source not usable: {exc}", allow_retries=False) from None
    context.log.info(
        f"shard {shard.key}: {report.counts['seen']} files, {report.counts['new']} new, "
        f"{report.counts['failed']} failed, {report.counts['rejected']} rejected"
    )
    return dg.MaterializeResult(
        metadata={
            "shard_dir": dg.MetadataValue.path(str(shard.local.path)) if shard.local else dg.MetadataValue.text(shard.display_name),
            **stage_metadata(report, "seen"),
            "browse": dg.MetadataValue.url(shard_browse_url(shard.key)),
            "status_counts": dg.MetadataValue.json(counts),
        }
    )


@dg.asset(
    partitions_def=image_shards_partitions_def,
    deps=[raw_files],
    group_name="images",
    kinds={"python", "pillow"},
    op_tags=cpu_op_tags(),
    # A database hiccup (or a lock timeout against a concurrent run) retries the step; a retry
    # derives only what is still pending.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def derivatives(
    context: dg.AssetExecutionContext, database: PostgresResource, library: ImageLibraryResource
) -> dg.MaterializeResult:
    """Thumbnail (WebP within 300×300 unless THUMBNAIL_FORMAT / THUMBNAIL_SIZE say otherwise),
    watermarked preview (JPEG, long edge 1200) and a 5-colour palette for every pending image of
    the shard, decoded once, upright per EXIF.
    Written to the derivative cache for ``r2_objects`` to publish."""
    with database.connect() as conn:
        report = derive_shard(
            conn,
            context.partition_key,
            cache_dir=library.cache,
            spec=library.derivative_spec(),
            workers=library.derive_workers,
            progress=context.log.info,
            staging_dir=library.staging,
        )
        samples = catalog_reports.derived_samples(conn, context.partition_key)
        counts = catalog_reports.status_counts(conn, context.partition_key)
        located = places.place_counts(conn, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            **stage_metadata(report, "processed"),
            "derivative_cache": dg.MetadataValue.path(str(library.cache)),
            "browse": dg.MetadataValue.url(shard_browse_url(context.partition_key)),
            "status_counts": dg.MetadataValue.json(counts),
            "samples": dg.MetadataValue.md(_palette_table(samples)),
            "images_with_gps": dg.MetadataValue.int(located["located"]),
            "images_with_place": dg.MetadataValue.int(located["placed"]),
            "places": dg.MetadataValue.md(_places_table(located["top"])),
        }
    )


class PublishConfig(dg.Config):
    full_verification: bool = Field(
        default=False,
        description="Check every object of the shard in the store, even when nothing changed since the last full check.",
    )


@dg.asset(
    partitions_def=image_shards_partitions_def,
    # "duplicates" (the duplicates area, a layer above) by key: its skip decisions must exist before
    # anything is uploaded. Loaded without that area, the key is an external asset.
    deps=[derivatives, dg.AssetKey("duplicates")],
    group_name="images",
    kinds={"s3"},
    pool="r2",
    op_tags=cpu_op_tags(),
    # Whole-step retries for outages longer than the client's own retries; a rerun only
    # uploads what is still missing.
    retry_policy=dg.RetryPolicy(
        max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    check_specs=[
        dg.AssetCheckSpec("objects_published", asset="r2_objects",
                          description="Every processed image of the shard is published, with its three URLs recorded."),
        dg.AssetCheckSpec("objects_in_store", asset="r2_objects",
                          description="A random sample of the shard's published images (CHECK_SAMPLE_IMAGES, "
                          "default 20) has all three objects in the store: catches objects deleted behind our back."),
    ],
)
def r2_objects(
    context: dg.AssetExecutionContext,
    config: PublishConfig,
    database: PostgresResource,
    library: ImageLibraryResource,
    object_store: ObjectStore,
) -> dg.MaterializeResult:
    """Every processed image of the shard in the object store (Cloudflare R2, S3, MinIO or the
    local directory): the original (private) at ``original/{yyyy}/{mm}/{id}.{ext}``, the
    thumbnail at the key its derivation recorded (``thumbnail/{id}.webp`` by default, the extension
    following THUMBNAIL_FORMAT) and the watermarked preview at ``watermarked/{id}.jpg``.
    Objects already stored are skipped; an image becomes ``uploaded`` once all three are.
    A shard with nothing new since its last full check is not listed again (``settled``);
    ``verify_shard_objects_job`` checks every object."""
    object_store.preflight_or_fail()
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
                indexed_model=_active_model(context),
                skip_settled=not config.full_verification,
                staging_dir=library.staging,
                copy_from=server_side_copies(library.sources(), object_store),
            )
        except StoreConfigError as exc:
            raise dg.Failure(description=f"object store rejected the upload: {exc}", allow_retries=False) from None
        finally:
            staging.release_settled(conn, context.partition_key, library.staging)  # disk stays within budget
        counts = catalog_reports.status_counts(conn, context.partition_key)
        after = object_store.request_counts()  # before the checks' HEADs: the stage's own requests
        checks = _check_results(conn, context.partition_key, object_store)
        if not all(c.passed for c in checks if c.check_name == "objects_in_store"):
            verification.unsettle(conn, context.partition_key, object_store)  # the next run checks everything
    metadata = {
        **stage_metadata(report, RATE_KEY),
        "object_store": dg.MetadataValue.text(object_store.describe()),
        "browse": dg.MetadataValue.url(shard_browse_url(context.partition_key)),
        "requests": dg.MetadataValue.json(
            {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
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
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _active_model(context: dg.AssetExecutionContext) -> str | None:
    """The model whose vectors make a published path ``indexed`` (from the environment, nothing loaded)."""
    try:
        return active_model_id()
    except ValueError as exc:  # a bad EMBEDDING_PROVIDER must not stop publishing
        context.log.warning(f"not promoting embedded images to 'indexed': {exc}")
        return None


def _check_results(conn: psycopg.Connection, shard: str, store: ObjectStore) -> list[dg.AssetCheckResult]:
    gaps = checks.object_gaps(conn, shard)
    spot = checks.spot_check_objects(conn, shard, store, settings.env_int("CHECK_SAMPLE_IMAGES", checks.DEFAULT_SPOT_CHECK))
    return [
        dg.AssetCheckResult(
            check_name="objects_published",
            passed=gaps.gaps == 0,
            severity=dg.AssetCheckSeverity.WARN,  # unpublished images are retried by the next run
            metadata={"images": gaps.images, "unpublished": gaps.unpublished,
                      "uploaded_without_urls": gaps.uploaded_without_urls},
        ),
        dg.AssetCheckResult(
            check_name="objects_in_store",
            passed=not spot.missing,
            metadata={"images_checked": spot.checked, "missing": len(spot.missing),
                      "missing_keys": dg.MetadataValue.json(spot.missing[:20])},
        ),
    ]


def _places_table(top: list[dict[str, Any]]) -> str:
    if not top:
        return "No image of this shard has a GPS position near a known place."
    return md_table(("place", "images"), [(places.place_label(r["city"], r["region"], r["country"]), r["images"]) for r in top])


def _palette_table(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return "No derived images yet."
    rows = ["| image | size | thumbnail | palette |", "|---|---|---|---|"]
    for s in samples:
        swatches = " ".join(f"`{c['hex']}` {c['share']:.0%}" for c in (s["palette"] or []))
        rows.append(f"| `{s['id'][:8]}` {s['format']} | {s['width']}×{s['height']} | `{s['thumbnail_key']}` | {swatches} |")
    return "\n".join(rows)

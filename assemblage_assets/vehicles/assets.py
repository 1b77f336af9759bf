"""``vehicle_image_backfill``: listing images of imported vehicles, trickled in per organization."""

import dagster as dg
from pydantic import Field

from assemblage_assets.core.metadata import md_table
from assemblage_assets.partitions import vehicle_organizations_partitions_def
from assemblage_assets.vehicles import backfill, records
from resources.database import PostgresResource
from resources.image_fetch import ImageFetchResource
from resources.image_library import ImageLibraryResource
from resources.object_store import ObjectStore, StoreConfigError


class VehicleBackfillConfig(dg.Config):
    """The knobs of the older ``npm run trickle-backfill-images``, with its defaults."""

    limit: int = Field(default=100, description="Vehicles handled by this run (--limit).")
    batch_size: int = Field(default=10, description="Vehicles per batch (--batch-size).")
    max_images_per_vehicle: int = Field(default=20, description="First N listed URLs per vehicle (--max-images).")
    dry_run: bool = Field(default=False, description="List what would be fetched; write nothing (--dry-run).")
    pause_seconds: float = Field(default=2.0, description="Pause between batches, sparing sources and store.")
    max_attempts: int = Field(
        default=5, description="Trickles a vehicle whose URLs all fail gets before it is marked failed."
    )
    retry_backoff_minutes: float = Field(
        default=30.0, description="Wait before the 2nd attempt; doubles each time (max 1 day)."
    )

    def options(self) -> backfill.BackfillOptions:
        return backfill.BackfillOptions(**self.model_dump())


@dg.asset(
    partitions_def=vehicle_organizations_partitions_def,
    group_name="vehicles",
    kinds={"python", "postgres", "s3"},
    pool="image_fetch",
    # Whole-step retries for database or store outages; a retry redoes only unfinished vehicles.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def vehicle_image_backfill(
    context: dg.AssetExecutionContext,
    config: VehicleBackfillConfig,
    database: PostgresResource,
    object_store: ObjectStore,
    image_fetch: ImageFetchResource,
    library: ImageLibraryResource,
) -> dg.MaterializeResult:
    """Listing images of the organization's public vehicles that wait as URLs in
    ``origin_metadata.image_urls``: downloaded safely (SSRF guard, size cap, real-image check),
    stored with a thumbnail under ``vehicles/{vehicle_id}/`` and recorded in ``vehicle_images``;
    the vehicle is then marked ``images_backfilled`` (or retried later with backoff when every
    URL failed). Each run handles at most ``limit`` vehicles, pausing between batches."""
    options = config.options()
    if not options.dry_run:
        object_store.preflight_or_fail()
    organization = context.partition_key
    with database.connect() as conn, image_fetch.fetcher() as fetcher:
        try:
            report = backfill.backfill_organization(
                conn,
                organization,
                fetcher=fetcher,
                store=object_store,
                spec=library.derivative_spec(),
                options=options,
                progress=context.log.info,
            )
        except StoreConfigError as exc:
            raise dg.Failure(description=f"object store rejected the upload: {exc}", allow_retries=False) from None
        remaining = dict(records.due_counts(conn)).get(organization, 0)
    counts = report.counts
    metadata: dict[str, object] = {
        "dry_run": options.dry_run,
        "vehicles_selected": counts["vehicles_selected"],
        "vehicles_backfilled": counts["vehicles_backfilled"],
        "vehicles_retrying": counts["vehicles_retrying"],
        "vehicles_failed": counts["vehicles_failed"],
        "images_stored": counts["images_stored"],
        "urls_failed": counts["urls_failed"],
        "bytes": counts["bytes"],
        "vehicles_still_due": remaining,
        "seconds": round(report.seconds, 2),
    }
    if report.failures:
        metadata["failures"] = dg.MetadataValue.md(md_table(("vehicle", "url", "reason"), report.failures))
    if options.dry_run:
        metadata["urls_planned"] = counts["urls_planned"]
        metadata["would_fetch"] = dg.MetadataValue.json(dict(report.planned))
    return dg.MaterializeResult(metadata=metadata)


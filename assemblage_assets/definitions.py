"""The code location: every asset, job, sensor and resource of Assemblage."""

import dagster as dg

from assemblage_assets.embeddings.assets import embeddings, vector_index
from assemblage_assets.embeddings.sensors import missing_embeddings_sensor
from assemblage_assets.images.assets import derivatives, r2_objects, raw_files
from assemblage_assets.images.sensors import image_shards_sensor
from assemblage_assets.jobs import (
    embed_shard_job,
    finalize_index_job,
    ingest_shard_job,
    publish_shard_job,
    vehicle_backfill_job,
)
from assemblage_assets.platform.distributed import distributed_defs
from assemblage_assets.vehicles.assets import vehicle_image_backfill
from resources import embedding
from resources.database import PostgresResource
from resources.image_fetch import ImageFetchResource
from resources.image_library import ImageLibraryResource
from resources.object_store import ObjectStore
from schedules.retry_queue import retry_queue_schedule
from schedules.trickle_backfill import trickle_backfill_schedule


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment (see README for every variable)."""
    return {
        "database": PostgresResource(),
        "library": ImageLibraryResource.from_env(),
        "object_store": ObjectStore.from_env(),  # R2/S3 when R2_BUCKET is set, else a local directory
        "image_fetch": ImageFetchResource.from_env(),
        "embedding": embedding.from_env(secrets_from_dagster=True),  # EMBEDDING_PROVIDER picks the class
    }


def images_defs() -> dg.Definitions:
    """Scan, derive and publish: the spine of every shard."""
    return dg.Definitions(
        assets=[raw_files, derivatives, r2_objects],
        jobs=[ingest_shard_job, publish_shard_job],
        sensors=[image_shards_sensor],
    )


def vehicles_defs() -> dg.Definitions:
    """Listing images of imported vehicles, trickled in per organization."""
    return dg.Definitions(
        assets=[vehicle_image_backfill],
        jobs=[vehicle_backfill_job],
        schedules=[trickle_backfill_schedule],
    )


def embeddings_defs() -> dg.Definitions:
    """Vectors per image from the configured provider, kept complete by a sensor and the retry queue."""
    return dg.Definitions(
        assets=[embeddings, vector_index],
        jobs=[embed_shard_job, finalize_index_job],
        sensors=[missing_embeddings_sensor],
        schedules=[retry_queue_schedule],
    )


# Only one Definitions object may live at module scope: per-area ones are built by functions.
defs = dg.Definitions.merge(
    images_defs(),
    vehicles_defs(),
    embeddings_defs(),
    distributed_defs(),  # the celery job, when the celery extra is installed
    dg.Definitions(resources=build_resources()),
)

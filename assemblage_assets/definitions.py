"""The code location: each area's Definitions, the schedules, and the resources from the environment."""

import dagster as dg

from assemblage_assets.duplicates.definitions import defs as duplicates_defs
from assemblage_assets.embeddings.definitions import defs as embeddings_defs
from assemblage_assets.images.definitions import defs as images_defs
from assemblage_assets.platform.distributed import distributed_defs
from assemblage_assets.vehicles.definitions import defs as vehicles_defs
from resources import caption, embedding, object_store
from resources.database import PostgresResource
from resources.image_fetch import ImageFetchResource
from resources.image_library import ImageLibraryResource
from schedules.retry_queue import retry_queue_schedule
from schedules.trickle_backfill import trickle_backfill_schedule


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment (see README for every variable)."""
    return {
        "database": PostgresResource(),
        "library": ImageLibraryResource.from_env(),
        "object_store": object_store.from_env(),  # R2/S3 when R2_BUCKET is set, else a local directory
        "image_fetch": ImageFetchResource.from_env(),
        "embedding": embedding.from_env(secrets_from_dagster=True),  # EMBEDDING_PROVIDER picks the class
        "caption": caption.from_env(secrets_from_dagster=True),  # CAPTION_PROVIDER (default none)
    }


# Only one Definitions object may live at module scope: per-area ones are built by functions.
defs = dg.Definitions.merge(
    images_defs(),
    duplicates_defs(),
    embeddings_defs(),
    vehicles_defs(),
    distributed_defs(),  # the celery job, when the celery extra is installed
    dg.Definitions(schedules=[retry_queue_schedule, trickle_backfill_schedule], resources=build_resources()),
)

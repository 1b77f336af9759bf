"""The code location: every asset, job, sensor and resource of Assemblage."""

import dagster as dg

from assemblage_assets.image_assets import derivatives, raw_files
from assemblage_assets.jobs import ingest_shard_job
from assemblage_assets.shard_sensor import image_shards_sensor
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment (see README for every variable)."""
    return {
        "database": PostgresResource(),
        "library": ImageLibraryResource.from_env(),
    }


def images_defs() -> dg.Definitions:
    """Scan and derive: the spine of every shard."""
    return dg.Definitions(
        assets=[raw_files, derivatives],
        jobs=[ingest_shard_job],
        sensors=[image_shards_sensor],
    )


# Only one Definitions object may live at module scope: per-area ones are built by functions.
defs = dg.Definitions.merge(images_defs(), dg.Definitions(resources=build_resources()))

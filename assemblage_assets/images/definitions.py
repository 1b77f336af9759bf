"""The images area in Dagster: scan, derive and publish, the spine of every shard."""

import dagster as dg

from assemblage_assets.images.assets import derivatives, r2_objects, raw_files
from assemblage_assets.images.jobs import ingest_shard_job, publish_shard_job, verify_shard_objects_job
from assemblage_assets.images.sensors import image_shards_sensor
from assemblage_assets.images.uploads_sensor import uploads_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[raw_files, derivatives, r2_objects],
        jobs=[ingest_shard_job, publish_shard_job, verify_shard_objects_job],
        sensors=[image_shards_sensor, uploads_sensor],
    )

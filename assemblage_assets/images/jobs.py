"""Jobs of the images area: what the shard sensor, the CLI and the UI launch per shard."""

import dagster as dg

from assemblage_assets.constants import INGEST_SHARD_JOB, PUBLISH_SHARD_JOB
from assemblage_assets.images.assets import derivatives, r2_objects, raw_files

ingest_shard_job = dg.define_asset_job(
    name=INGEST_SHARD_JOB,
    selection=dg.AssetSelection.assets(raw_files, derivatives, r2_objects),
    description="Scan a directory shard, derive its thumbnails, previews and palettes, and publish "
    "them with the originals to the object store.",
)

publish_shard_job = dg.define_asset_job(
    name=PUBLISH_SHARD_JOB,
    selection=dg.AssetSelection.assets(r2_objects),
    description="Publish a shard's processed images to the object store (R2, S3 or the local directory).",
)

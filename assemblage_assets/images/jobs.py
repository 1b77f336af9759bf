"""Jobs of the images area: what the shard sensor, the CLI and the UI launch per shard."""

import dagster as dg

from assemblage_assets.constants import INGEST_SHARD_JOB, PUBLISH_SHARD_JOB, VERIFY_OBJECTS_JOB
from assemblage_assets.images.assets import r2_objects

ingest_shard_job = dg.define_asset_job(
    name=INGEST_SHARD_JOB,
    # Everything upstream of r2_objects: raw_files, derivatives and (when the duplicates area is
    # loaded) duplicates, which r2_objects depends on by key.
    selection=dg.AssetSelection.assets(r2_objects).upstream(),
    description="Scan a directory shard, derive its thumbnails, previews and palettes, group its "
    "near-duplicates, and publish them with the originals to the object store.",
)

publish_shard_job = dg.define_asset_job(
    name=PUBLISH_SHARD_JOB,
    selection=dg.AssetSelection.assets(r2_objects),
    description="Publish a shard's processed images to the object store (R2, S3 or the local directory).",
)

# Also merged into the CLI's run config: a run config given at launch replaces the job's own.
VERIFY_RUN_CONFIG = {"ops": {"r2_objects": {"config": {"full_verification": True}}}}

verify_shard_objects_job = dg.define_asset_job(
    name=VERIFY_OBJECTS_JOB,
    selection=dg.AssetSelection.assets(r2_objects),
    config=VERIFY_RUN_CONFIG,
    description="Check every object of a shard in the store (listing or HEADs) and put back what is "
    "missing, even when nothing changed since the last full check (a normal run skips such a shard).",
)

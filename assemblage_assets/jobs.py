"""Asset jobs: the selections that schedules, sensors and the CLI launch."""

import dagster as dg

from assemblage_assets.embedding_assets import embeddings
from assemblage_assets.image_assets import derivatives, raw_files
from assemblage_assets.index_assets import vector_index
from assemblage_assets.object_assets import r2_objects
from assemblage_assets.vehicle_assets import vehicle_image_backfill

ingest_shard_job = dg.define_asset_job(
    name="ingest_shard_job",
    selection=dg.AssetSelection.assets(raw_files, derivatives, r2_objects),
    description="Scan a directory shard, derive its thumbnails, previews and palettes, and publish "
    "them with the originals to the object store.",
)

publish_shard_job = dg.define_asset_job(
    name="publish_shard_job",
    selection=dg.AssetSelection.assets(r2_objects),
    description="Publish a shard's processed images to the object store (R2, S3 or the local directory).",
)

vehicle_backfill_job = dg.define_asset_job(
    name="vehicle_backfill_job",
    selection=dg.AssetSelection.assets(vehicle_image_backfill),
    description="Trickle the listing images of one organization's vehicles into the object store.",
)

embed_shard_job = dg.define_asset_job(
    name="embed_shard_job",
    selection=dg.AssetSelection.assets(embeddings),
    description="Give a shard's processed images a vector from the configured embedding provider.",
    tags={"assemblage/stage": "embeddings"},  # the run queue caps these runs (instance_config.STAGE_TAG)
)

finalize_index_job = dg.define_asset_job(
    name="finalize_index_job",
    selection=dg.AssetSelection.assets(vector_index),
    description="Finalize a bulk load: build each model's deferred, missing or invalid HNSW index once, "
    "then VACUUM ANALYZE image_embeddings.",
)

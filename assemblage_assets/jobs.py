"""Asset jobs: the selections that schedules, sensors and the CLI launch."""

import dagster as dg

from assemblage_assets.image_assets import derivatives, raw_files

ingest_shard_job = dg.define_asset_job(
    name="ingest_shard_job",
    selection=dg.AssetSelection.assets(raw_files, derivatives),
    description="Scan a directory shard and derive its thumbnails, previews and palettes.",
)

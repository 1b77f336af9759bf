"""Jobs of the embeddings area: a shard's vectors, and the finalize step of a bulk load."""

import dagster as dg

from assemblage_assets.constants import EMBED_SHARD_JOB, EMBED_STAGE, FINALIZE_INDEX_JOB, STAGE_TAG
from assemblage_assets.embeddings.assets import embeddings, vector_index

embed_shard_job = dg.define_asset_job(
    name=EMBED_SHARD_JOB,
    selection=dg.AssetSelection.assets(embeddings),
    description="Give a shard's processed images a vector from the configured embedding provider.",
    tags={STAGE_TAG: EMBED_STAGE},  # the run queue caps these runs (platform.instance_config)
)

finalize_index_job = dg.define_asset_job(
    name=FINALIZE_INDEX_JOB,
    selection=dg.AssetSelection.assets(vector_index),
    description="Finalize a bulk load: build each model's deferred, missing or invalid HNSW index once, "
    "then VACUUM ANALYZE image_embeddings.",
)

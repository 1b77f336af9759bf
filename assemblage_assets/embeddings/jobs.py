"""Jobs of the embeddings area: a shard's vectors, and the finalize step of a bulk load."""

import dagster as dg

from assemblage_assets.constants import CAPTION_SHARD_JOB, EMBED_SHARD_JOB, EMBED_STAGE, FINALIZE_INDEX_JOB, STAGE_TAG
from assemblage_assets.embeddings.assets import embeddings, vector_index
from assemblage_assets.embeddings.caption_assets import captions

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

caption_shard_job = dg.define_asset_job(
    name=CAPTION_SHARD_JOB,
    selection=dg.AssetSelection.assets(captions),
    description="Caption a shard's derived images with the configured caption provider (CAPTION_PROVIDER).",
    tags={STAGE_TAG: EMBED_STAGE},  # same providers and GPUs as the embeddings: the same run cap
)

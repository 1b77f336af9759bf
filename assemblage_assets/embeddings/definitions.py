"""The embeddings area in Dagster: vectors per image from the configured provider, kept complete
by the missing-embeddings sensor (and by ``schedules/retry_queue.py``, merged at the top), and
captions, kept complete by the missing-captions sensor."""

import dagster as dg

from assemblage_assets.embeddings.assets import embeddings, vector_index
from assemblage_assets.embeddings.caption_assets import captions
from assemblage_assets.embeddings.jobs import caption_shard_job, embed_shard_job, finalize_index_job
from assemblage_assets.embeddings.sensors import missing_captions_sensor, missing_embeddings_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[embeddings, vector_index, captions],
        jobs=[embed_shard_job, finalize_index_job, caption_shard_job],
        sensors=[missing_embeddings_sensor, missing_captions_sensor],
    )

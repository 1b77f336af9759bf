"""Partition definitions shared by the shard assets."""

import dagster as dg

IMAGE_SHARDS = "image_shards"

# One partition per directory shard of IMAGES_DIR; keys come from shards.shard_key.
image_shards_partitions_def = dg.DynamicPartitionsDefinition(name=IMAGE_SHARDS)

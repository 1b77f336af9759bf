"""The duplicates area in Dagster: the ``duplicates`` asset (run by ``ingest_shard_job`` between
``derivatives`` and ``r2_objects``, which depends on it by key)."""

import dagster as dg

from assemblage_assets.duplicates.assets import duplicates


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[duplicates])

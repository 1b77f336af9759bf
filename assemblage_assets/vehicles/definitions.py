"""The vehicles area in Dagster: listing images trickled in per organization (the schedule is
``schedules/trickle_backfill.py``, merged at the top)."""

import dagster as dg

from assemblage_assets.vehicles.assets import vehicle_image_backfill
from assemblage_assets.vehicles.jobs import vehicle_backfill_job


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[vehicle_image_backfill], jobs=[vehicle_backfill_job])

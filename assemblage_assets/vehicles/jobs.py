"""The job of the vehicles area, and the run config that schedules and the CLI give it."""

from typing import Any

import dagster as dg

from assemblage_assets.constants import VEHICLE_BACKFILL_JOB
from assemblage_assets.vehicles.assets import vehicle_image_backfill

vehicle_backfill_job = dg.define_asset_job(
    name=VEHICLE_BACKFILL_JOB,
    selection=dg.AssetSelection.assets(vehicle_image_backfill),
    description="Trickle the listing images of one organization's vehicles into the object store.",
)


def backfill_run_config(limit: int, **options: Any) -> dict[str, Any]:
    """Run config of one organization's trickle: ``limit`` vehicles plus any other option of
    ``VehicleBackfillConfig``."""
    return {"ops": {vehicle_image_backfill.op.name: {"config": {"limit": limit, **options}}}}

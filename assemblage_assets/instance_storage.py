"""Old path of ``platform.instance_storage``: dagster.yaml files written before the move name it."""

from assemblage_assets.platform.instance_storage import AssemblagePostgresStorage

__all__ = ["AssemblagePostgresStorage"]

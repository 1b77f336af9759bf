"""Old path of ``platform.celery_app``: workers started with ``-A assemblage_assets.celery_app`` keep working."""

from assemblage_assets.platform.celery_app import app, execute_plan

__all__ = ["app", "execute_plan"]

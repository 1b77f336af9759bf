"""Assemblage: Dagster assets, sensors and jobs for image ingestion, and the plain functions behind them."""

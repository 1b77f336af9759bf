"""Dagster resources: database, image library, object store, embedding providers, URL fetcher."""

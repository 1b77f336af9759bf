"""Platform: the Dagster instance (dagster.yaml, storage in Postgres), Celery execution and its queues."""

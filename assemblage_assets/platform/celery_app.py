"""The Celery app of Assemblage's workers: ``celery -A assemblage_assets.platform.celery_app worker -Q gpu``.

dagster-celery's own ``dagster_celery.app`` reads its broker from a generated module or
``DAGSTER_CELERY_BROKER_HOST`` (AMQP); this app takes the same broker, backend and default
queue as ``distributed_shard_job`` (``CELERY_BROKER_URL``, ``CELERY_BACKEND_URL``,
``ASSEMBLAGE_CPU_QUEUE``) and registers dagster-celery's step task.
"""

from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from assemblage_assets.platform.distributed import executor_config

app = make_app(CeleryExecutor.for_cli(**executor_config()).app_args())
execute_plan = create_task(app)

"""The few private Dagster names this project needs, imported in one place.

``ConfigurableClassData`` is what Dagster hands a custom instance storage class
(``platform/instance_storage.py``); it has no public export in Dagster 1.13. If an upgrade moves
it, this import fails, and so does ``tests/platform/test_dagster_private.py``, naming it.

``CheckRunHealthResult`` and ``WorkerStatus`` are what a run launcher answers run monitoring with
(``platform/run_launcher.py``); neither has a public export.
"""

from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._serdes import ConfigurableClassData

__all__ = ["CheckRunHealthResult", "ConfigurableClassData", "WorkerStatus"]

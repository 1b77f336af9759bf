"""The one private Dagster name the project uses, and the old module paths users already have."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from assemblage_assets.platform import instance_config


def test_configurable_class_data_is_still_where_dagster_keeps_it() -> None:
    # If a Dagster upgrade moves it, this import (and platform/dagster_private.py) fails here first.
    from dagster._serdes import ConfigurableClassData as upstream

    from assemblage_assets.platform.dagster_private import ConfigurableClassData

    assert ConfigurableClassData is upstream
    data = ConfigurableClassData("assemblage_assets.platform.instance_storage", "AssemblagePostgresStorage", "{}")
    assert (data.module_name, data.class_name, data.config_yaml) == (
        "assemblage_assets.platform.instance_storage", "AssemblagePostgresStorage", "{}"
    )


def test_dagster_yaml_written_before_the_move_is_rewritten_and_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed dagster.yaml naming the old storage module is rewritten to the new path, and a
    user-owned one naming it keeps working through the one-line re-export."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@127.0.0.1:1/db")
    monkeypatch.delenv("ASSEMBLAGE_DAGSTER_STORAGE", raising=False)
    old = instance_config.render_yaml().replace(
        "assemblage_assets.platform.instance_storage", "assemblage_assets.instance_storage"
    )
    assert "module: assemblage_assets.instance_storage\n" in old
    (tmp_path / "dagster.yaml").write_text(old)
    assert instance_config.write_config(tmp_path)
    rewritten = yaml.safe_load((tmp_path / "dagster.yaml").read_text())
    assert rewritten["storage"]["custom"]["module"] == "assemblage_assets.platform.instance_storage"

    import importlib

    legacy = importlib.import_module("assemblage_assets.instance_storage")
    current = importlib.import_module("assemblage_assets.platform.instance_storage")
    assert legacy.AssemblagePostgresStorage is current.AssemblagePostgresStorage


def test_celery_workers_started_with_the_old_app_path_get_the_same_app() -> None:
    pytest.importorskip("dagster_celery")
    import importlib

    legacy = importlib.import_module("assemblage_assets.celery_app")
    current = importlib.import_module("assemblage_assets.platform.celery_app")
    assert legacy.app is current.app
    assert "execute_plan" in legacy.app.tasks

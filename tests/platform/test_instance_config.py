"""The rendered dagster.yaml: valid for Dagster, Postgres storage in its own schema, limits applied,
a user's own file left alone."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from assemblage_assets.platform import instance_config
from assemblage_assets.platform.dagster_home import ensure_dagster_home
from assemblage_assets.platform.instance_storage import schema_url


def test_rendered_yaml_validates_and_holds_no_secret(assemblage_env: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_MAX_CONCURRENT_RUNS", "7")
    monkeypatch.setenv("EMBED_MAX_CONCURRENT_RUNS", "2")
    monkeypatch.setenv("DAGSTER_POOL_DEFAULT_LIMIT", "3")
    home = ensure_dagster_home(sync_pools=False)
    text = (home / "dagster.yaml").read_text()
    assert text.startswith(instance_config.MANAGED_HEADER)
    assert assemblage_env["DATABASE_URL"] not in text  # only the {env: DATABASE_URL} reference
    config, custom_class = dagster_instance_config(str(home))  # raises on a schema error
    assert custom_class is None
    assert config["storage"]["custom"]["config"]["database_url"] == {"env": "DATABASE_URL"}
    runs = config["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 7
    assert runs["tag_concurrency_limits"] == [{"key": "assemblage/stage", "value": "embeddings", "limit": 2}]
    assert config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 3}


def test_local_storage_without_database_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("SUPABASE_DB_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    home = ensure_dagster_home()
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert "storage" not in config
    dagster_instance_config(str(home))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    assert limits == {"gpu": 1, "replicate": 2, "openai": 2}


def test_supabase_db_url_is_referenced_by_its_own_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://u:secret@db.example.org:5432/postgres?sslmode=require")
    config = instance_config.render_config()
    assert config["storage"]["custom"]["config"]["database_url"] == {"env": "SUPABASE_DB_URL"}
    assert "secret" not in instance_config.render_yaml()
    monkeypatch.setenv("ASSEMBLAGE_DAGSTER_STORAGE", "local")
    assert "storage" not in instance_config.render_config()


def test_schema_url_keeps_socket_host_and_sets_search_path() -> None:
    url = schema_url("host=/tmp/pg dbname=t_1 user=postgres port=5433", "dagster")
    assert url.startswith("postgresql+psycopg2://postgres@/t_1?")
    assert "host=%2Ftmp%2Fpg" in url and "port=5433" in url
    assert "options=-c%20search_path%3Ddagster%2Cpublic" in url
    url = schema_url("postgresql://u:p%40ss@db.example.org:6543/postgres?sslmode=require", "ops")
    assert url.startswith("postgresql+psycopg2://u:p%40ss@db.example.org:6543/postgres?sslmode=require&options=")


def test_postgres_instance_storage_in_dagster_schema(assemblage_env: dict[str, str]) -> None:
    home = ensure_dagster_home()

    @dg.asset
    def probe() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"n": 1})

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = dg.materialize([probe], instance=instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
        limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    assert limits["gpu"] == 1
    assert (home / "dagster.yaml").read_text().startswith(instance_config.MANAGED_HEADER)

    with psycopg.connect(assemblage_env["DATABASE_URL"]) as conn:
        tables = dict(
            conn.execute(
                "SELECT table_name, table_schema FROM information_schema.tables "
                "WHERE table_name IN ('runs', 'event_logs', 'jobs', 'concurrency_limits', 'alembic_version')"
            ).fetchall()
        )
        stored = conn.execute("SELECT status FROM dagster.runs WHERE run_id = %s", (result.run_id,)).fetchone()
    assert set(tables.values()) == {"dagster"}, tables
    assert {"runs", "event_logs", "jobs", "concurrency_limits"} <= set(tables)
    assert stored == ("SUCCESS",)


def test_user_owned_dagster_yaml_is_left_alone(assemblage_env: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    path = Path(assemblage_env["DAGSTER_HOME"]) / "dagster.yaml"
    own = "telemetry:\n  enabled: false\n"
    path.write_text(own)
    ensure_dagster_home()
    assert path.read_text() == own
    assert "not managed by assemblage" in capsys.readouterr().err


def test_managed_file_is_regenerated(assemblage_env: dict[str, str], monkeypatch) -> None:
    home = ensure_dagster_home(sync_pools=False)
    monkeypatch.setenv("DAGSTER_MAX_CONCURRENT_RUNS", "9")
    ensure_dagster_home(sync_pools=False)
    assert yaml.safe_load((home / "dagster.yaml").read_text())["concurrency"]["runs"]["max_concurrent_runs"] == 9


def test_placeholder_of_earlier_versions_is_upgraded(assemblage_env: dict[str, str]) -> None:
    path = Path(assemblage_env["DAGSTER_HOME"]) / "dagster.yaml"
    path.write_text(instance_config.LEGACY_PLACEHOLDER)
    ensure_dagster_home(sync_pools=False)
    assert path.read_text().startswith(instance_config.MANAGED_HEADER)

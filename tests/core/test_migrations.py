"""Migrations against the real embedded server: idempotent, concurrent-safe, embedded default."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import psycopg

from assemblage_assets.core import db

EXPECTED_TABLES = {"images", "processing_log", "schema_migrations"}


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrate_twice_applies_nothing_the_second_time(pg_dsn: str) -> None:
    # pg_dsn is already migrated once by the fixture
    assert db.migrate(pg_dsn) == []
    assert EXPECTED_TABLES <= _tables(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in db.load_migrations()]


def _migrate_in_child(dsn: str, queue: multiprocessing.Queue) -> None:
    queue.put(db.migrate(dsn))


def test_two_processes_migrating_at_once_apply_each_migration_once(pg_server: str) -> None:
    name = "t_concurrent_migrate"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_child, args=(dsn, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    applied = [queue.get(timeout=5) for _ in procs]
    names = [m.name for m in db.load_migrations()]
    # exactly one process applied everything, the other found nothing to do
    assert sorted(applied, key=len) == [[], names]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(names)


def test_embedded_default_starts_under_assemblage_home(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL")}
    env["ASSEMBLAGE_HOME"] = str(tmp_path / "home")
    cli = [sys.executable, "-m", "assemblage_assets.cli"]
    try:
        out = subprocess.run([*cli, "db", "migrate"], env=env, capture_output=True, text=True, check=True)
        assert "applied" in out.stdout
        url = subprocess.run([*cli, "db", "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert str(tmp_path / "home" / "pgdata") in url
        assert EXPECTED_TABLES <= _tables(url)
        with psycopg.connect(url) as conn:
            available = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            assert available.fetchone()[0] == "0.6.2"
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("16")
    finally:
        subprocess.run([*cli, "db", "stop"], env=env, capture_output=True, text=True)


def test_supabase_db_url_is_accepted_as_the_older_name(pg_dsn: str, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SUPABASE_DB_URL", pg_dsn)
    assert db.resolve_dsn() == pg_dsn

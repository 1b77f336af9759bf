"""Shared fixtures: a real embedded PostgreSQL (pgserver) per test session, a fresh database
per test, and an isolated ASSEMBLAGE_HOME. Nothing here mocks the database."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from assemblage_assets.core import db

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of an embedded PostgreSQL 16 + pgvector server for the whole session.

    Its data lives in a folder of its own, not under pytest's numbered basetemp: another pytest
    session on the machine prunes old basetemps, which would delete a running server's data."""
    root = Path(tempfile.mkdtemp(prefix="assemblage-test-pg-"))
    pgdata = root / "pgdata"
    dsn = db.start_embedded(pgdata)
    yield dsn
    db.stop_embedded(pgdata)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """A database migrated once per session: each test's database is a copy of it (about 0.05 s)
    rather than a fresh migration (about 0.3 s, times some 500 tests). Nothing connects to it
    after the migration, as CREATE DATABASE ... TEMPLATE requires."""
    name = f"template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db.migrate(make_conninfo(pg_server, dbname=name))
    return name


@pytest.fixture
def pg_dsn(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database on the session server (a copy of the session's migrated
    template), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    dsn = make_conninfo(pg_server, dbname=name)
    yield dsn
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def assemblage_env(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of an isolated project state folder pointing at the test database."""
    home = tmp_path / "state"
    env = {
        "ASSEMBLAGE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "IMAGES_DIR": str(tmp_path / "images"),
        "DATABASE_URL": pg_dsn,
        # Today's CLIP path; backend tests ask for others. ``auto`` would export and time ONNX
        # builds once per fresh ASSEMBLAGE_HOME, i.e. in every test.
        "CLIP_BACKEND": "torch",
        "CLIP_PRECISION": "fp32",
    }
    (home / "dagster").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SUPABASE_DB_URL", raising=False)
    return env


@pytest.fixture
def corpus_dir() -> Path:
    if not CORPUS_DIR.is_dir():
        pytest.skip("../shared/corpus not present (the shared test corpus lives beside the project)")
    return CORPUS_DIR

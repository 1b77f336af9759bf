"""Postgres access: resolve the DSN (external or embedded pgserver), connect, migrate.

One code path for both: the embedded server is just a DSN pointing at a unix socket under
``ASSEMBLAGE_HOME/pgdata``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from assemblage_assets.core import settings

log = logging.getLogger(__name__)

SQL_DIR = Path(os.environ.get("ASSEMBLAGE_SQL_DIR") or Path(__file__).resolve().parents[2] / "sql")
_MIGRATION_LOCK_KEY = 7_312_024_001  # arbitrary constant shared by every migrating process
_MIGRATION_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL 16 + pgvector server and return its DSN.

    The server outlives this process on purpose: Dagster runs each step in fresh processes and
    they all share one server; ``assemblage db stop`` stops it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs nags when XDG_RUNTIME_DIR is unset
        import pgserver  # heavy import, only needed for the embedded default

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server if one runs on ``pgdata``; returns whether one was running."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs nags when XDG_RUNTIME_DIR is unset
        from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except Exception:  # noqa: BLE001 - already stopped or stale pid file
        return False
    return True


def resolve_dsn() -> str:
    """The DSN in use: ``DATABASE_URL``/``SUPABASE_DB_URL`` when set, else the embedded server."""
    external = settings.database_url()
    if external:
        return external
    return start_embedded(settings.Paths.from_env().pgdata)


def redact(dsn: str) -> str:
    """DSN without its password, for logs and metadata."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection]:
    """Autocommit connection: multi-statement writes use ``conn.transaction()`` explicitly."""
    with psycopg.connect(dsn, row_factory=dict_row, autocommit=True) as conn:
        yield conn


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            migrations.append(Migration(match.group(1), path.stem, path.read_text()))
    if not migrations:
        raise FileNotFoundError(f"no migrations found in {sql_dir}")
    return migrations


def migrate(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations in order; returns the names applied.

    Safe to run twice and from several processes at once: an advisory lock serialises
    migrators and each migration commits together with its ``schema_migrations`` row.
    """
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    text PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            for migration in load_migrations(sql_dir):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        log.warning("migration %s changed after it was applied", migration.name)
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now

"""Postgres access: resolve the DSN (external or embedded pgserver), connect, migrate.

One code path for both: the embedded server is just a DSN pointing at a unix socket under
``ASSEMBLAGE_HOME/pgdata``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from assemblage_assets.core import settings

log = logging.getLogger(__name__)

SQL_DIR = Path(os.environ.get("ASSEMBLAGE_SQL_DIR") or Path(__file__).resolve().parents[2] / "sql")
_MIGRATION_LOCK_KEY = 7_312_024_001  # arbitrary constant shared by every migrating process
_MIGRATION_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")


# Socket directory (the DSN's host) -> pgdata of every embedded server this process started:
# a connection failure to one of them checks whether its postmaster died and restarts it.
_EMBEDDED: dict[str, Path] = {}
RECOVERY_SECONDS = 60.0  # EMBEDDED_PG_RECOVERY_SECONDS: how long a restart may take (crash recovery)


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL 16 + pgvector server and return its DSN.

    The server outlives this process on purpose: Dagster runs each step in fresh processes and
    they all share one server; ``assemblage db stop`` stops it. pgserver keeps one handle per
    process and per folder without checking that its postmaster still lives, so the handle is
    checked here on every call and a dead server is started again (Postgres then runs its own
    crash recovery from the WAL).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs nags when XDG_RUNTIME_DIR is unset
        import pgserver  # heavy import, only needed for the embedded default

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if not _postmaster_alive(pgdata):
        _restart(server, pgdata)
    uri = server.get_uri()
    host = conninfo_to_dict(uri).get("host")
    if host:
        _EMBEDDED[str(host)] = pgdata.expanduser().resolve()
    return uri


def _postmaster_alive(pgdata: Path) -> bool:
    """Whether the postmaster named in ``postmaster.pid`` runs and accepts connections."""
    import psutil
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata.expanduser().resolve())
        if info is None or not info.is_running() or info.status != "ready":
            return False
        return info.process.status() != psutil.STATUS_ZOMBIE  # killed, not yet reaped
    except (AssertionError, ValueError, OSError, psutil.Error):  # a pid file being written, a process gone
        return False


def _restart(server: object, pgdata: Path) -> None:
    """Start the server of a cached pgserver handle again. Backends of the killed postmaster
    may hold its shared memory for a moment, so the start is retried until ``RECOVERY_SECONDS``."""
    deadline = time.monotonic() + settings.env_float("EMBEDDED_PG_RECOVERY_SECONDS", RECOVERY_SECONDS)
    delay = 0.2
    while True:
        try:
            with type(server)._lock:  # noqa: SLF001 - pgserver's own inter-process lock around starts
                if not _postmaster_alive(pgdata):
                    log.warning("embedded Postgres in %s is not running: starting it again", pgdata)
                    server.ensure_postgres_running()  # type: ignore[attr-defined]
            return
        except Exception as exc:  # noqa: BLE001 - pg_ctl failed (shared memory still held): again
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"embedded Postgres in {pgdata} did not come back: {exc}") from exc
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def recover_embedded(dsn: str) -> bool:
    """After a failed connection: whether ``dsn`` is an embedded server of this process (then
    it runs again when this returns: started again if its postmaster was dead)."""
    try:
        host = conninfo_to_dict(dsn).get("host")
    except psycopg.ProgrammingError:
        return False
    pgdata = _EMBEDDED.get(str(host)) if host else None
    if pgdata is None:
        return False
    if not _postmaster_alive(pgdata):
        start_embedded(pgdata)
    return True


def open_connection(dsn: str, **kwargs: Any) -> psycopg.Connection:
    """``psycopg.connect`` that brings a dead embedded server back first: a crashed postmaster
    costs a running command one restart, not minutes of retries against a dead socket."""
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError:
        if not recover_embedded(dsn):
            raise
    deadline = time.monotonic() + settings.env_float("EMBEDDED_PG_RECOVERY_SECONDS", RECOVERY_SECONDS)
    while True:  # it may still be replaying the WAL ("the database system is starting up")
        try:
            return psycopg.connect(dsn, **kwargs)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
            recover_embedded(dsn)


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
    with open_connection(dsn, row_factory=dict_row, autocommit=True) as conn:
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
    with open_connection(dsn, autocommit=True) as conn:
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

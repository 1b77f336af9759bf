"""Postgres resource: the system of record for every asset."""


from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import PrivateAttr

from assemblage_assets.core import db


class PostgresResource(dg.ConfigurableResource):
    """Connections to the catalogue database.

    ``dsn`` empty means: ``DATABASE_URL``/``SUPABASE_DB_URL`` if set, else the embedded
    pgserver under ``ASSEMBLAGE_HOME``. Migrations are applied once per run, before any query.
    """

    dsn: str = ""

    _resolved: str = PrivateAttr(default="")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._resolved = self.dsn or db.resolve_dsn()
        applied = db.migrate(self._resolved)
        if applied and context.log:
            context.log.info(f"applied migrations: {', '.join(applied)}")

    def get_dsn(self) -> str:
        if not self._resolved:
            self._resolved = self.dsn or db.resolve_dsn()
        return self._resolved

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with db.connect(self.get_dsn()) as conn:
            yield conn

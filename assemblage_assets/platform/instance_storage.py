"""Dagster instance storage (runs, event log, schedules) in the project's Postgres, in its own schema.

dagster-postgres takes a SQLAlchemy URL and has no schema option, and ``DATABASE_URL`` may be a
libpq key=value string. This storage class reads the DSN from the environment (the yaml holds
only ``{env: DATABASE_URL}``), turns it into a URL whose connections use ``search_path=<schema>``,
and creates that schema before dagster-postgres creates its tables.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from dagster import Field, StringSource
from dagster_postgres import DagsterPostgresStorage
from psycopg.conninfo import conninfo_to_dict

from assemblage_assets.platform.dagster_private import ConfigurableClassData

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"DAGSTER_PG_SCHEMA must be a lower-case SQL identifier, got {schema!r}")
    return schema


def schema_url(dsn: str, schema: str) -> str:
    """SQLAlchemy URL (psycopg2) for a libpq DSN or URL, with ``search_path`` set to ``schema``."""
    parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    user = quote(parts.pop("user", ""), safe="")
    password = parts.pop("password", "")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = parts.pop("host", "")
    port = parts.pop("port", "")
    dbname = quote(parts.pop("dbname", ""), safe="")
    query = dict(parts)
    if host.startswith("/") or "," in host:
        # socket directories and host lists only fit in the query string
        query.update({"host": host, **({"port": port} if port else {})})
        netloc = auth
    else:
        netloc = auth + host + (f":{port}" if port else "")
    # Our schema first; public after it so the extensions installed there (vector) stay visible.
    query["options"] = (query.get("options", "") + f" -c search_path={schema},public").strip()
    # psycopg2 explicitly: SQLAlchemy 2.1 would pick psycopg 3, whose server-side binding breaks
    # dagster-postgres's `NOTIFY run_events, %(id)s`.
    return f"postgresql+psycopg2://{netloc}/{dbname}?{urlencode(query, quote_via=quote)}"


def create_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{check_schema_name(schema)}"')


class AssemblagePostgresStorage(DagsterPostgresStorage):
    """dagster-postgres storage in schema ``schema`` of the database at ``database_url``."""

    def __init__(self, database_url: str, schema: str = "dagster", inst_data: ConfigurableClassData | None = None):
        self.schema = check_schema_name(schema)
        create_schema(database_url, self.schema)
        super().__init__(schema_url(database_url, self.schema), should_autocreate_tables=True, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "database_url": Field(StringSource),
            "schema": Field(StringSource, is_required=False, default_value="dagster"),
        }

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> AssemblagePostgresStorage:
        return cls(config_value["database_url"], config_value.get("schema", "dagster"), inst_data=inst_data)

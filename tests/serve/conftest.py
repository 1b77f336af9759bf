"""One ingested catalogue per module (building it embeds and publishes real files), on its own
database of the session's embedded Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.embed_support import tiny_clip
from support.serve_support import Catalogue, build, enrich

from assemblage_assets.core import db


@pytest.fixture(scope="module")
def catalogue(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    name = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(pg_server, dbname=name)
    db.migrate(dsn)
    tmp = tmp_path_factory.mktemp("serve")
    cat = build(dsn, tmp, tiny_clip(Path(tmp_path_factory.getbasetemp()) / "models"))
    enrich(cat)
    yield cat
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

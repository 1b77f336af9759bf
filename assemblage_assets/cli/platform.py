"""``assemblage db`` and ``assemblage dagster-config``: the database and the Dagster instance."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from assemblage_assets.cli.common import database_dsn
from assemblage_assets.core import settings


def cmd_db(args: argparse.Namespace) -> int:
    from assemblage_assets.core import db

    if args.action == "url":
        print(database_dsn(migrate=False))
    elif args.action == "migrate":
        applied = db.migrate(database_dsn(migrate=False))
        print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    elif args.action == "start":
        print(f"embedded Postgres running: {database_dsn(migrate=False)}")
    elif args.action == "stop":
        stopped = db.stop_embedded(settings.Paths.from_env().pgdata)
        print("embedded Postgres stopped" if stopped else "embedded Postgres was not running")
    return 0


def cmd_dagster_config(args: argparse.Namespace) -> int:
    from assemblage_assets.platform import instance_config
    from assemblage_assets.platform.dagster_home import ensure_dagster_home

    if args.write:
        home = ensure_dagster_home()  # also sets the per-pool limits in the instance
        print(f"{home / 'dagster.yaml'}", file=sys.stderr)
    print(instance_config.render_yaml(), end="")
    return 0


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("db", help="database: print the DSN, apply migrations, start/stop the embedded server")
    p.add_argument("action", choices=["url", "migrate", "start", "stop"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("dagster-config", help="print the dagster.yaml rendered from the environment (storage, queue, limits)")
    p.add_argument("--write", action="store_true", help="also write it to DAGSTER_HOME (unless user-owned) and set pool limits")
    p.set_defaults(func=cmd_dagster_config)

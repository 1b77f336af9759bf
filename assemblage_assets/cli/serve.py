"""``assemblage serve``: the search API and browse page on the catalogue."""

from __future__ import annotations

import argparse
from typing import Any

from assemblage_assets.cli.common import configured_provider, database_dsn, fail


def cmd_serve(args: argparse.Namespace) -> int:
    from assemblage_assets.core import settings
    from assemblage_assets.serve import server
    from assemblage_assets.serve.security import ConfigError, require_token_off_loopback
    from resources.embedding.types import EmbeddingError

    try:  # before anything starts: an open catalogue on the network is refused outright
        require_token_off_loopback(args.host, settings.env_str("ASSEMBLAGE_API_TOKEN"))
    except ConfigError as exc:
        return fail(str(exc))
    try:
        provider = configured_provider()
    except (EmbeddingError, ValueError):
        provider = None  # text search then uses the model recorded with the vectors
    try:
        server.run(database_dsn(), provider, args.host, args.port)
    except ConfigError as exc:
        return fail(str(exc))
    return 0


def add_commands(sub: Any, default_images: str) -> None:
    p = sub.add_parser("serve", help="search API and browse page (http://127.0.0.1:8000 by default)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs ASSEMBLAGE_API_TOKEN)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.set_defaults(func=cmd_serve)

"""CI fixture: serve one listing photo on 127.0.0.1 and import one vehicle that lists it.

Prints the organization id (the partition to materialize) once the server runs, then serves
until killed. Loopback only; the backfill is allowed to fetch from it with FETCH_ALLOW_HOSTS.
"""

from __future__ import annotations

import functools
import http.server
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from assemblage_assets.core import db
from assemblage_assets.dev.sample_data import make_photo


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="listing-"))
    make_photo(800, 600, seed=3).save(folder / "car.jpg", "JPEG", quality=85)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/car.jpg"
    organization = uuid.uuid4()
    dsn = db.resolve_dsn()
    db.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO vehicles (organization_id, is_public, origin_metadata) VALUES (%s, true, %s)",
            (organization, Jsonb({"image_urls": [url]})),
        )
    print(organization, flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()

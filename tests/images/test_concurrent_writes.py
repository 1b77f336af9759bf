"""Two runs writing the same images at once (two warm ingests of one tree) must not deadlock:
the catalogue updates rows in one stable order, whatever order the results came back in."""

from __future__ import annotations

import threading
import uuid

import psycopg

from assemblage_assets.core import db
from assemblage_assets.images import catalog
from assemblage_assets.images.derive import DerivedImage

ROUNDS = 4
IMAGES = 60


def _seed(dsn: str) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(IMAGES)]
    with db.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO images (id, content_hash, bytes, width, height, format, original_ext, original_key)
               VALUES (%s, %s, 1, 1, 1, 'JPEG', 'jpg', 'k')""",
            [(i, i) for i in ids],
        )
        cur.executemany(
            "INSERT INTO processing_log (local_path, shard, image_id, status) VALUES (%s, 's', %s, 'pending')",
            [(f"/x/{i}.jpg", i) for i in ids],
        )
    return ids


def test_two_writers_in_opposite_orders_never_deadlock(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    for _ in range(ROUNDS):
        ids = _seed(pg_dsn)
        orders = [ids, list(reversed(ids))]
        barrier = threading.Barrier(2)

        def write(order: list[str], barrier: threading.Barrier = barrier) -> None:
            try:
                with db.connect(pg_dsn) as conn:
                    barrier.wait(timeout=10)
                    catalog.record_derived(conn, [DerivedImage(i, thumbnail_size=(3, 2), preview_size=(6, 4)) for i in order])
            except (psycopg.Error, threading.BrokenBarrierError) as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(o,)) for o in orders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    with db.connect(pg_dsn) as conn:
        statuses = {r["status"] for r in conn.execute("SELECT status FROM processing_log")}
    assert statuses == {"processed"}

"""Chaos trial of a Postgres crash inside a running process (issue 14, item 3): the embedded
postmaster of a server this test owns (never the session's shared one) is SIGKILLed while a paid
embedding run is buying vectors. The process notices on its next connection failure, starts the
server again (Postgres replays its WAL), writes the results it was holding, and the step's retry
in the same process finishes the shard: one vector per image, no image bought twice, nothing
lost."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.embed_support import FakeReplicate, Reply, Seen, image_ids, ingest, query, write_tree

from assemblage_assets.core import db
from assemblage_assets.embeddings.embed import embed_shard
from resources.database import PostgresResource
from resources.embedding import ReplicateEmbedding

IMAGES = 12


@pytest.fixture
def own_server() -> Iterator[tuple[str, Path]]:
    """A separate embedded server with a short path of its own (unix socket length)."""
    root = Path(tempfile.mkdtemp(prefix="assemblage-crash-"))
    pgdata = root / "pgdata"
    dsn = db.start_embedded(pgdata)
    db.migrate(dsn)
    yield dsn, pgdata
    db.stop_embedded(pgdata)
    shutil.rmtree(root, ignore_errors=True)


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def crash_postgres_after(fake: FakeReplicate, pgdata: Path, predictions: int) -> list[int]:
    """SIGKILL the postmaster once the stand-in has created ``predictions`` predictions (that
    one is bought, then Postgres dies); returns the killed pid, once it happened."""
    killed: list[int] = []
    create = fake.routes[("POST", "/v1/predictions")]

    def create_then_crash(seen: Seen) -> Reply:
        reply = create(seen)
        if fake.created == predictions and not killed:
            killed.append(postmaster_pid(pgdata))
            os.kill(killed[0], signal.SIGKILL)
        return reply

    fake.routes[("POST", "/v1/predictions")] = create_then_crash
    return killed


def test_a_killed_postmaster_is_restarted_by_the_running_process_and_the_shard_completes(
    own_server: tuple[str, Path], tmp_path: Path
) -> None:
    dsn, pgdata = own_server
    images = write_tree(tmp_path / "images", {"crash": ["orange", "blue", "green", "white"] * (IMAGES // 4)})
    cache = tmp_path / "cache"
    ingest(dsn, images, cache)
    assert len(image_ids(dsn, "crash")) == IMAGES
    with FakeReplicate() as fake:
        killed = crash_postgres_after(fake, pgdata, 5)
        provider = ReplicateEmbedding(api_token="r8", base_url=fake.url, max_calls_per_min=0, concurrency=2,
                                      timeout_seconds=20.0, retry_base_seconds=0.02)
        resource = PostgresResource(dsn=dsn)  # its DSN is cached, as in a run

        def step() -> object:
            with resource.connect() as conn:
                return embed_shard(conn, "crash", provider, dsn=resource.get_dsn(), cache_dir=cache, run_id="crash")

        with pytest.raises(psycopg.OperationalError):  # the step fails once, promptly ...
            step()
        assert killed and db._postmaster_alive(pgdata)  # ... having started the server again
        assert postmaster_pid(pgdata) != killed[0]
        # what the step held was written after reconnecting: every prediction bought so far has
        # its cost row and vector, or its id on record for the retry to fetch (never bought again)
        settled = query(dsn, "SELECT count(*) AS n FROM paid_call_intents WHERE state = 'settled'")[0]["n"]
        open_ids = query(dsn, "SELECT count(*) AS n FROM paid_call_intents WHERE state IN ('intent', 'created')")[0]["n"]
        assert settled + open_ids >= fake.created and settled >= fake.created - provider.concurrency
        assert query(dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == settled

        print(f"\npostgres killed after {fake.created} predictions; after the failed step: {settled} settled, "
              f"{open_ids} open for the retry")
        report = step()  # the step's retry, in the same process
        billed = fake.created
    assert report.counts["failed"] == 0
    rows = query(dsn, "SELECT image_id, count(*) AS n FROM image_embeddings GROUP BY image_id")
    assert len(rows) == IMAGES and all(r["n"] == 1 for r in rows)
    assert billed == IMAGES  # nothing bought twice
    assert query(dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == billed
    assert query(dsn, "SELECT count(*) AS n FROM embedding_queue")[0]["n"] == 0


def test_a_connection_to_a_dead_embedded_server_brings_it_back(own_server: tuple[str, Path]) -> None:
    dsn, pgdata = own_server
    with db.connect(dsn) as conn:
        conn.execute("CREATE TABLE survivor (n int)")
        conn.execute("INSERT INTO survivor VALUES (1), (2)")
    pid = postmaster_pid(pgdata)
    os.kill(pid, signal.SIGKILL)
    done = threading.Event()
    # two threads reconnect at once: one restart, both connect
    results: list[int] = []

    def reader() -> None:
        with db.connect(dsn) as conn:
            results.append(conn.execute("SELECT count(*) AS n FROM survivor").fetchone()["n"])
        done.set()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [2, 2]  # committed rows survived the crash (WAL replay)
    assert postmaster_pid(pgdata) != pid and db._postmaster_alive(pgdata)


def test_a_postgres_crash_during_paid_captions_loses_no_caption_and_buys_none_twice(
    own_server: tuple[str, Path], tmp_path: Path
) -> None:
    """The captions stage reconnects as the embeddings stage does (held captions are written
    after the restart; in a trial 7 of 7 bought were settled when the step failed, 3 of 5
    without the reconnect), and the step's retry buys nothing again."""
    from assemblage_assets.embeddings.captions import caption_shard
    from resources.caption import ReplicateCaptions

    dsn, pgdata = own_server
    images = write_tree(tmp_path / "images", {"crash": ["orange", "blue", "green", "white"] * (IMAGES // 4)})
    cache = tmp_path / "cache"
    ingest(dsn, images, cache)
    with FakeReplicate() as fake:
        fake.output_for = lambda seen: "a small car parked on a quiet street"
        killed = crash_postgres_after(fake, pgdata, 5)
        provider = ReplicateCaptions(api_token="r8", base_url=fake.url, max_calls_per_min=0, concurrency=2,
                                     timeout_seconds=20.0, retry_base_seconds=0.02)
        resource = PostgresResource(dsn=dsn)

        def step() -> object:
            with resource.connect() as conn:
                return caption_shard(conn, "crash", provider, dsn=resource.get_dsn(), cache_dir=cache, run_id="crash")

        with pytest.raises(psycopg.OperationalError):  # the step fails once, promptly ...
            step()
        assert killed and db._postmaster_alive(pgdata) and postmaster_pid(pgdata) != killed[0]
        # ... having written, after reconnecting, the captions it held: every prediction bought so
        # far is settled with its cost row and caption, or open with its id for the retry to fetch
        settled = query(dsn, "SELECT count(*) AS n FROM paid_call_intents WHERE state = 'settled'")[0]["n"]
        open_ids = query(dsn, "SELECT count(*) AS n FROM paid_call_intents WHERE state IN ('intent', 'created')")[0]["n"]
        print(f"\ncaptions: postgres killed after 5 predictions, {fake.created} bought when the step failed: "
              f"{settled} settled, {open_ids} open for the retry")
        assert settled + open_ids >= fake.created and settled >= 5 - provider.concurrency
        assert query(dsn, "SELECT count(*) AS n FROM images WHERE caption IS NOT NULL")[0]["n"] == settled
        report = step()  # the step's retry, in the same process
        billed = fake.created
    assert report.counts["failed"] == 0
    rows = query(dsn, "SELECT count(*) AS n FROM images WHERE caption = 'a small car parked on a quiet street'")
    assert rows[0]["n"] == IMAGES
    assert billed == IMAGES  # nothing bought twice
    costs = query(dsn, "SELECT count(*) AS n FROM embedding_usage_log WHERE purpose = 'caption'")[0]["n"]
    assert costs == billed
    assert query(dsn, "SELECT count(*) AS n FROM paid_call_intents WHERE state <> 'settled'")[0]["n"] == 0

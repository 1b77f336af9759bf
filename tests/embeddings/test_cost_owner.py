"""Cost attribution: every image has an owner (from its source, or ``DEFAULT_OWNER``), every paid
call is logged with the owner of the image it was for, and ``assemblage status`` sums cost per owner."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.embed_support import FakeReplicate, query, write_tree

from assemblage_assets.cli.status import collect_status
from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from resources.embedding import ReplicateEmbedding
from resources.image_library import ImageLibraryResource


def test_paid_calls_are_logged_and_summed_per_owner(
    assemblage_env: dict[str, str], pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_tree(tmp_path / "images", {"alice": ["orange", "blue"], "bob": ["green", "white", "blue"]})
    cache = tmp_path / "cache"
    owners = {"alice": "user-alice", "bob": None}  # bob's folder falls back to DEFAULT_OWNER
    monkeypatch.setenv("DEFAULT_OWNER", "team-default")
    library = ImageLibraryResource.from_env()
    assert library.default_owner == "team-default"
    with db.connect(pg_dsn) as conn:
        for shard in discover_shards(images):
            scan_shard(conn, shard, max_pixels=10**8, owner=owners[shard.key] or library.default_owner)
            derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)
    assert {r["owner"]: r["n"] for r in query(pg_dsn, "SELECT owner, count(*) AS n FROM images GROUP BY owner")} == {
        "user-alice": 2, "team-default": 3
    }
    with FakeReplicate(dim=768) as fake:
        provider = ReplicateEmbedding(api_token="r8_test", base_url=fake.url, timeout_seconds=5.0,
                                      max_calls_per_min=0, concurrency=1, price_per_second=0.001)
        with db.connect(pg_dsn) as conn:
            for shard in ("alice", "bob"):
                embed_shard(conn, shard, provider, dsn=pg_dsn, cache_dir=cache, run_id=f"run-{shard}")
        billed = len(fake.calls("POST", "/v1/predictions"))
    rows = query(pg_dsn, "SELECT owner, count(*) AS calls, sum(cost_usd)::float AS usd FROM embedding_usage_log GROUP BY owner")
    assert {r["owner"]: r["calls"] for r in rows} == {"user-alice": 2, "team-default": 3}
    assert sum(r["calls"] for r in rows) == billed == 5
    by_owner = {r["owner"]: r for r in collect_status()["embeddings"]["cost"]["by_owner"]}
    assert {o: r["calls"] for o, r in by_owner.items()} == {"user-alice": 2, "team-default": 3}
    assert by_owner["user-alice"]["cost_usd"] == pytest.approx(next(r["usd"] for r in rows if r["owner"] == "user-alice"))


def test_an_image_keeps_its_first_owner_and_gains_one_when_it_had_none(pg_dsn: str, tmp_path: Path) -> None:
    images = write_tree(tmp_path / "images", {"a": ["orange"]})
    (shard,) = discover_shards(images)
    with db.connect(pg_dsn) as conn:
        scan_shard(conn, shard, max_pixels=10**8, owner=None)
        assert query(pg_dsn, "SELECT owner FROM images")[0]["owner"] is None
        (images / "a" / "orange-0.jpg").touch()  # changed mtime: scanned again
        scan_shard(conn, shard, max_pixels=10**8, owner="user-1")
        (images / "a" / "orange-0.jpg").touch()
        scan_shard(conn, shard, max_pixels=10**8, owner="user-2")
    assert query(pg_dsn, "SELECT owner FROM images")[0]["owner"] == "user-1"


def test_an_entry_that_knows_its_owner_wins_over_the_shard_default(pg_dsn: str, tmp_path: Path) -> None:
    """What a source with a user id per file (an uploads bucket) hands the catalogue."""
    from assemblage_assets.images import catalog
    from assemblage_assets.images.probe import probe_file
    from assemblage_assets.images.scan import ScanEntry

    images = write_tree(tmp_path / "images", {"uploads": ["orange", "blue"]})
    files = sorted((images / "uploads").iterdir())
    entries = [ScanEntry(str(f), size=f.stat().st_size, mtime_ns=f.stat().st_mtime_ns, owner=o)
               for f, o in zip(files, ("user-7", None), strict=True)]
    with db.connect(pg_dsn) as conn:
        catalog.record_scanned(conn, "uploads", [(e, probe_file(e.path, e.size or 0, 10**8)) for e in entries],
                               owner="team-default")
    assert sorted(r["owner"] for r in query(pg_dsn, "SELECT owner FROM images")) == ["team-default", "user-7"]


def test_status_shows_open_and_lost_paid_requests(
    assemblage_env: dict[str, str], pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a killed run leaves in the journal is visible in ``assemblage status``."""
    from assemblage_assets.cli.status import print_paid_calls
    from assemblage_assets.embeddings.intents import PaidCallJournal
    from resources.embedding.types import Usage

    images = write_tree(tmp_path / "images", {"a": ["orange", "blue", "green"]})
    with db.connect(pg_dsn) as conn:
        (shard,) = discover_shards(images)
        scan_shard(conn, shard, max_pixels=10**8, owner=None)
    ids = [r["id"] for r in query(pg_dsn, "SELECT id::text AS id FROM images ORDER BY id")]
    journal = PaidCallJournal(pg_dsn, "replicate", "clip@v1", "run-killed", Usage(units=1, unit="call", cost_usd=0.01))
    try:
        journal.intend(ids[0], "prediction")  # sent, never answered
        journal.created(journal.intend(ids[1], "prediction"), "pred-123")  # accepted: fetchable by id
        journal.lost(journal.intend(ids[2], "prediction"), Usage(units=1, unit="call", cost_usd=0.01), ids[2])
    finally:
        journal.close()
    (row,) = collect_status()["embeddings"]["paid_calls"]
    assert (row["provider"], row["model"], row["request"]) == ("replicate", "clip@v1", "prediction")
    assert (row["intent"], row["created"], row["lost"]) == (1, 1, 1)
    print_paid_calls([row])
    out = capsys.readouterr().out
    assert "2 open since" in out and "1 with a provider id" in out and "1 billed and lost" in out
    lost_rows = query(pg_dsn, "SELECT ok FROM embedding_usage_log WHERE image_id = %s", ids[2])
    assert [r["ok"] for r in lost_rows] == [False]

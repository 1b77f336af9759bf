"""A path is ``indexed`` exactly when its image is published and has a vector for the active
model, whichever of the two facts comes last; ``assemblage status`` flags any row that disagrees."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.embed_support import ingest, tiny_clip, write_tree

from assemblage_assets.cli.status import collect_status
from assemblage_assets.core import db
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.images.publish import publish_shard
from resources.embedding import LocalClipEmbedding
from resources.object_store import LocalObjectStore


def _statuses(dsn: str, shard: str) -> list[str]:
    with db.connect(dsn) as conn:
        return sorted(r["status"] for r in conn.execute("SELECT status FROM processing_log WHERE shard = %s", (shard,)))


def test_embedded_before_published_ends_indexed(
    assemblage_env: dict[str, str], pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of the outage in the field: publishing failed, embeddings ran on the processed
    images, the next ingest published them. They must not stay 'uploaded' for ever."""
    tiny = tiny_clip(tmp_path / "models")
    monkeypatch.setenv("CLIP_MODEL", str(tiny))
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue", "white"]})
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=4)
    with db.connect(pg_dsn) as conn:
        report = embed_shard(conn, "cars", provider, dsn=pg_dsn, cache_dir=cache)
        assert report.counts["embedded"] == 3
        assert _statuses(pg_dsn, "cars") == ["processed"] * 3  # not published yet
        store = LocalObjectStore(root=str(tmp_path / "objects"))
        publish_shard(conn, "cars", store=store, cache_dir=cache, indexed_model=provider.model_id)
    assert _statuses(pg_dsn, "cars") == ["indexed"] * 3
    assert collect_status()["disagreements"]["total"] == 0


def test_status_flags_rows_that_disagree_with_the_catalogue(
    assemblage_env: dict[str, str], pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_clip(tmp_path / "models")
    monkeypatch.setenv("CLIP_MODEL", str(tiny))
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue"]})
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=4)
    with db.connect(pg_dsn) as conn:
        embed_shard(conn, "cars", provider, dsn=pg_dsn, cache_dir=cache)
        store = LocalObjectStore(root=str(tmp_path / "objects"))
        publish_shard(conn, "cars", store=store, cache_dir=cache, indexed_model=provider.model_id)
        assert _statuses(pg_dsn, "cars") == ["indexed", "indexed"]
        assert collect_status()["disagreements"]["total"] == 0
        # what an older version left behind: published, with a vector, still 'uploaded'; and a
        # path 'indexed' whose image lost its publication
        conn.execute("UPDATE processing_log SET status = 'uploaded' WHERE local_path LIKE %s", ("%orange-0.jpg",))
        conn.execute(
            """UPDATE images SET uploaded_at = NULL WHERE id =
               (SELECT image_id FROM processing_log WHERE local_path LIKE %s)""", ("%blue-1.jpg",)
        )
    flagged = collect_status()["disagreements"]
    assert flagged["total"] == 2
    assert {r["issue"] for r in flagged["rows"]} == {"uploaded-with-vector", "indexed-not-published"}
    assert {Path(r["local_path"]).name for r in flagged["rows"]} == {"orange-0.jpg", "blue-1.jpg"}

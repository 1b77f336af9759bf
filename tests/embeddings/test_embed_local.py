"""The local CLIP provider and the embeddings stage, with a tiny CLIP the tests build and load
through the real ``local_clip`` loader, against the real embedded Postgres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.embed_support import COLOURS, image_ids, ingest, photo, query, tiny_clip, write_tree

from assemblage_assets.core import db
from assemblage_assets.core.tags import normalize_tag, normalize_tags
from assemblage_assets.embeddings import retry_queue, search
from assemblage_assets.embeddings.embed import count_candidates, embed_shard
from assemblage_assets.embeddings.tags import load_vocabulary
from resources.embedding import LocalClipEmbedding
from resources.embedding.clip_encoder import decode_for_clip, is_random_checkpoint, load_clip
from resources.embedding.types import ProviderConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("models"))


@pytest.fixture
def tree(tmp_path: Path, pg_dsn: str) -> tuple[Path, Path]:
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue", "orange"], "parks": ["green", "white"]})
    cache = tmp_path / "cache"
    assert ingest(pg_dsn, images, cache) == ["cars", "parks"]
    return images, cache


def _embed(dsn: str, shard: str, provider: LocalClipEmbedding, cache: Path, **kw):
    with db.connect(dsn) as conn:
        return embed_shard(conn, shard, provider, dsn=dsn, cache_dir=cache, run_id="run-1", **kw)


def test_tiny_clip_loads_through_the_local_clip_loader(tiny: Path) -> None:
    assert is_random_checkpoint(tiny)
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=4)
    assert provider.model_id == "tiny-clip" and provider.dim == 16 and provider.pool == "gpu"
    vectors, usage = provider.embed_texts(["an orange car", "a green park"])
    assert usage is None and vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # the same weights through sentence-transformers' own encode give the same vectors
    model = load_clip(str(tiny))
    expected = model.encode(["an orange car", "a green park"], normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_stage_embeds_every_processed_image_once(pg_dsn: str, tree: tuple[Path, Path], tiny: Path) -> None:
    images, cache = tree
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=2)
    ids = image_ids(pg_dsn, "cars")
    with db.connect(pg_dsn) as conn:  # one path already published: it becomes 'indexed'
        conn.execute("UPDATE processing_log SET status = 'uploaded' WHERE local_path LIKE %s", ("%blue-1.jpg",))
    (cache / "thumbnail" / f"{ids['orange-2.jpg']}.webp").unlink()  # this one is decoded from its source
    report = _embed(pg_dsn, "cars", provider, cache)
    assert report.counts["embedded"] == 3 and report.counts["failed"] == 0 and report.cost_usd == 0
    rows = query(pg_dsn, "SELECT image_id::text AS id, model, provider, dim, embedding::text AS v FROM image_embeddings")
    assert {r["id"] for r in rows} == set(ids.values())
    assert {(r["model"], r["provider"], r["dim"]) for r in rows} == {("tiny-clip", "local_clip", 16)}
    # the stored vector is the model's output for the cached thumbnail (upright, no watermark,
    # large enough) or, without one, for the decoded source image
    encoder = provider.load()
    stored = {r["id"]: np.array(r["v"].strip("[]").split(","), np.float32) for r in rows}
    for name, image_id in ids.items():
        thumbnail = cache / "thumbnail" / f"{image_id}.webp"
        source = thumbnail if thumbnail.exists() else images / "cars" / name
        expected = encoder.encode_images([decode_for_clip(str(source), encoder.min_side)])[0]
        np.testing.assert_allclose(stored[image_id], expected, atol=1e-5)
        assert abs(np.linalg.norm(stored[image_id]) - 1) < 1e-5
    statuses = {r["p"].rsplit("/", 1)[-1]: r["status"] for r in query(pg_dsn, "SELECT local_path AS p, status FROM processing_log")}
    assert statuses["blue-1.jpg"] == "indexed" and statuses["orange-0.jpg"] == "processed"
    assert statuses["green-0.jpg"] == "processed"  # other shard untouched
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings e JOIN processing_log p USING (image_id) WHERE p.shard = 'parks'")[0]["n"] == 0
    # zero-shot tags: normalized, confident, from the vocabulary
    vocab = set(load_vocabulary(""))
    tags = query(pg_dsn, "SELECT image_id::text AS id, tag, confidence, model FROM image_tags")
    assert tags and {t["id"] for t in tags} == set(ids.values())
    assert all(t["tag"] in vocab and 0 < t["confidence"] <= 1 and t["model"] == "tiny-clip" for t in tags)
    # the HNSW index of the model exists
    index = query(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'image_embeddings' AND indexdef LIKE '%hnsw%'")
    assert len(index) == 1 and "vector(16)" in index[0]["indexdef"] and "'tiny-clip'" in index[0]["indexdef"]
    # a rerun finds nothing to do
    again = _embed(pg_dsn, "cars", provider, cache)
    assert again.counts["candidates"] == 0 and again.counts["embedded"] == 0
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 3


def test_a_bad_image_is_queued_with_backoff_then_errored_never_aborting(
    pg_dsn: str, tree: tuple[Path, Path], tiny: Path
) -> None:
    images, cache = tree
    provider = LocalClipEmbedding(clip_model=str(tiny))
    bad = image_ids(pg_dsn, "parks")["white-1.jpg"]
    (images / "parks" / "white-1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")
    for derived in cache.rglob(f"{bad}.*"):
        derived.unlink()

    def due_now() -> None:
        with db.connect(pg_dsn) as conn:
            conn.execute("UPDATE embedding_queue SET next_attempt_at = now() - interval '1 second'")

    report = _embed(pg_dsn, "parks", provider, cache)
    assert report.counts["embedded"] == 1 and report.counts["failed"] == 1 and report.counts["queued_for_retry"] == 1
    backoffs = []
    for attempt in range(1, 4):
        (row,) = query(pg_dsn, """SELECT status, retry_count, error_kind, last_error,
                                         round(extract(epoch FROM next_attempt_at - updated_at) / 60) AS minutes
                                  FROM embedding_queue""")
        assert row["status"] == "retry" and row["retry_count"] == attempt and row["error_kind"] == "corrupt"
        backoffs.append(int(row["minutes"]))
        assert _embed(pg_dsn, "parks", provider, cache).counts["candidates"] == 0  # not due yet
        due_now()
        _embed(pg_dsn, "parks", provider, cache)
    assert backoffs == [1, 2, 5]
    (row,) = query(pg_dsn, "SELECT status, retry_count, last_error FROM embedding_queue")
    assert row["status"] == "errored" and row["retry_count"] == 4 and "cannot decode" in row["last_error"]
    (log,) = query(pg_dsn, "SELECT status, error_kind, error_message FROM processing_log WHERE image_id = %s", bad)
    assert log["status"] == "processed" and log["error_kind"] == "embedding" and "failed 4 times" in log["error_message"]
    due_now()
    assert _embed(pg_dsn, "parks", provider, cache).counts["candidates"] == 0  # errored: left out
    with db.connect(pg_dsn) as conn:
        assert retry_queue.reset_errors(conn, "tiny-clip") == 1
        assert count_candidates(conn, "parks", "tiny-clip") == 1
    photo(COLOURS["white"]).save(images / "parks" / "white-1.jpg", quality=90)  # fixed
    assert _embed(pg_dsn, "parks", provider, cache).counts["embedded"] == 1
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_queue")[0]["n"] == 0
    assert query(pg_dsn, "SELECT error_kind FROM processing_log WHERE image_id = %s", bad)[0]["error_kind"] is None


def test_expected_dimension_mismatch_fails_before_any_write(pg_dsn: str, tree: tuple[Path, Path], tiny: Path) -> None:
    _, cache = tree
    provider = LocalClipEmbedding(clip_model=str(tiny), expected_vector_dim=768)
    with pytest.raises(ProviderConfigError, match="16-d vectors but EXPECTED_VECTOR_DIM=768"):
        _embed(pg_dsn, "cars", provider, cache)
    for table in ("image_embeddings", "embedding_models", "embedding_queue", "image_tags"):
        assert query(pg_dsn, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0


def test_unloadable_model_fails_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no traffic leaves the machine
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "st"))
    with pytest.raises(ProviderConfigError, match=r"cannot load CLIP model 'clip-ViT-L-14': no network access to the model hub.*set CLIP_MODEL to a local path"):
        LocalClipEmbedding(clip_model="clip-ViT-L-14").load()
    with pytest.raises(ProviderConfigError, match="no such directory"):
        LocalClipEmbedding(clip_model=str(tmp_path / "missing" / "model")).load()


def test_search_returns_the_stored_nearest_neighbour(pg_dsn: str, tree: tuple[Path, Path], tiny: Path) -> None:
    images, cache = tree
    provider = LocalClipEmbedding(clip_model=str(tiny))
    for shard in ("cars", "parks"):
        _embed(pg_dsn, shard, provider, cache)
    stored = {
        r["id"]: np.array(r["v"].strip("[]").split(","), np.float32)
        for r in query(pg_dsn, "SELECT image_id::text AS id, embedding::text AS v FROM image_embeddings")
    }
    ids = list(stored)
    matrix = np.stack([stored[i] for i in ids])
    with db.connect(pg_dsn) as conn:
        model = search.pick_model(conn, None, provider.model_id)
        hits = search.search_text(conn, provider, model, "orange car", k=5)
        text = provider.embed_texts(["orange car"])[0][0]
        expected = [ids[i] for i in np.argsort(1 - matrix @ text)]
        assert [h["image_id"] for h in hits] == expected
        np.testing.assert_allclose([h["distance"] for h in hits], np.sort(1 - matrix @ text), atol=1e-4)
        assert all(h["path"].startswith(str(images)) for h in hits)
        # image -> image by path: itself excluded, its stored nearest neighbour first
        anchor_path = str(images / "cars" / "orange-0.jpg")
        anchor, like = search.search_like(conn, provider, model, anchor_path, k=4)
        distances = 1 - matrix @ stored[anchor]
        order = [ids[i] for i in np.argsort(distances) if ids[i] != anchor]
        assert [h["image_id"] for h in like] == order
        # by id, and an image never ingested (embedded on the fly)
        assert search.search_like(conn, provider, model, anchor, k=1)[1][0]["image_id"] == order[0]
        outside = images.parent / "outside.jpg"
        photo(COLOURS["orange"], seed=1).save(outside)
        assert len(search.search_like(conn, provider, model, str(outside), k=3)[1]) == 3


def test_tag_normalization() -> None:
    assert normalize_tag("  The Orange Car! ") == "orange car"
    assert normalize_tag("a photo of the") == ""
    assert normalize_tags([("Car", 0.4), ("car ", 0.9), ("the street", 0.5), ("", 1.0), ("Sky", 1.7)]) == [
        ("sky", 1.0), ("car", 0.9), ("street", 0.5)
    ]
    assert load_vocabulary("none") == [] and load_vocabulary("Cars, the Boat,cars") == ["cars", "boat"]


def test_local_clip_never_embeds_the_watermarked_preview(tiny: Path, tmp_path: Path) -> None:
    """Thumbnail, then source, then the thumbnail at any size; the preview carries the tiled
    watermark and is never a stand-in, even when nothing else is left."""
    from resources.embedding.types import EmbedItem

    encoder = LocalClipEmbedding(clip_model=str(tiny)).load()
    preview = tmp_path / "preview.jpg"
    photo(COLOURS["orange"], seed=1).save(preview)
    small = tmp_path / "thumb.webp"
    from PIL import Image

    Image.new("RGB", (24, 18), COLOURS["blue"]).save(small)  # below the tiny model's 32 px input
    gone = str(tmp_path / "deleted.jpg")

    only_preview = encoder._decode(EmbedItem("00000000-0000-0000-0000-000000000001", gone, preview_path=str(preview)))
    assert getattr(only_preview, "error_kind", None) == "missing-file"
    with_small = encoder._decode(
        EmbedItem("00000000-0000-0000-0000-000000000002", gone, preview_path=str(preview), thumbnail_path=str(small))
    )
    assert not hasattr(with_small, "error_kind")
    r, g, b = with_small.convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert b > r  # the blue thumbnail, not the orange preview

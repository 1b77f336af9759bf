"""Tag-prompt vectors are embedded once per model and backend and read back by later steps
(``prompt_vectors``), on the real Postgres with the tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.embed_support import FakeReplicate, image_ids, ingest, query, tiny_clip, write_tree
from support.paid_text import fill_window, usage_rows, window_calls

from assemblage_assets.core import db
from assemblage_assets.embeddings import prompt_vectors
from assemblage_assets.embeddings.embed import embed_shard, vocabulary_vectors
from assemblage_assets.embeddings.tags import PROMPT
from assemblage_assets.embeddings.text_calls import CallRefused
from resources.embedding import LocalClipEmbedding, ReplicateEmbedding


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("models"))


@pytest.fixture
def text_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every list of texts the provider embeds, as a fresh Dagster step would (no memo)."""
    calls: list[list[str]] = []
    real = LocalClipEmbedding.embed_texts

    def counted(self, texts):  # noqa: ANN001, ANN202
        calls.append(list(texts))
        return real(self, texts)

    monkeypatch.setattr(LocalClipEmbedding, "embed_texts", counted)
    prompt_vectors.forget()
    yield calls
    prompt_vectors.forget()


def _step(dsn: str, shard: str, provider: LocalClipEmbedding, cache: Path):
    prompt_vectors.forget()  # each Dagster step is a new process
    with db.connect(dsn) as conn:
        return embed_shard(conn, shard, provider, dsn=dsn, cache_dir=cache, run_id=f"run-{shard}")


def test_later_steps_read_the_vocabulary_instead_of_embedding_it(
    pg_dsn: str, tmp_path: Path, tiny: Path, text_calls: list[list[str]]
) -> None:
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue"], "parks": ["green", "white"]})
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=2, tag_vocabulary="car,park,tree,street")
    prompts = [PROMPT.format(t) for t in ("car", "park", "tree", "street")]

    assert _step(pg_dsn, "cars", provider, cache).counts["embedded"] == 2
    assert text_calls == [prompts]
    rows = query(pg_dsn, "SELECT prompt, backend, embedding FROM prompt_vectors WHERE model = %s ORDER BY prompt",
                 provider.model_id)
    assert sorted(r["prompt"] for r in rows) == sorted(prompts) and {r["backend"] for r in rows} == {"torch-fp32"}
    expected = dict(zip(prompts, provider.load().encode_texts(prompts), strict=True))
    for r in rows:
        np.testing.assert_allclose(np.asarray(r["embedding"], dtype=np.float32), expected[r["prompt"]], atol=1e-6)

    # a second step (another process) embeds no prompt, yet tags its images
    text_calls.clear()
    assert _step(pg_dsn, "parks", provider, cache).counts["embedded"] == 2
    assert text_calls == []
    parks = set(image_ids(pg_dsn, "parks").values())
    tagged = query(pg_dsn, "SELECT DISTINCT image_id::text AS id FROM image_tags WHERE model = %s", provider.model_id)
    assert parks <= {t["id"] for t in tagged}

    # a vocabulary that grows embeds only the new prompt
    grown = LocalClipEmbedding(clip_model=str(tiny), batch_size=2, tag_vocabulary="car,park,tree,street,boat")
    with db.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM image_embeddings")
    assert _step(pg_dsn, "parks", grown, cache).counts["embedded"] == 2
    assert text_calls == [[PROMPT.format("boat")]]
    assert query(pg_dsn, "SELECT count(*) AS n FROM prompt_vectors")[0]["n"] == 5


def test_a_paid_vocabulary_takes_slots_of_the_shared_limit(pg_dsn: str) -> None:
    limit = 5
    fill_window(pg_dsn, "replicate", 2)  # another run took 2 of this minute's 5 slots
    prompt_vectors.forget()
    with FakeReplicate(dim=768) as fake, db.connect(pg_dsn) as conn:
        provider = ReplicateEmbedding(api_token="r8_test", base_url=fake.url, timeout_seconds=5.0,
                                      max_calls_per_min=limit, price_per_second=0.001)
        found = vocabulary_vectors(conn, provider, ["car", "park", "tree"], "run-v", dsn=pg_dsn, max_wait_seconds=0.5)
        assert found.shape == (3, 768) and fake.created == 3  # one prediction per prompt
        assert window_calls(pg_dsn, "replicate") == limit  # one slot per prediction
        (row,) = usage_rows(pg_dsn, "text")
        assert (row["requests"], row["run_id"], row["ok"]) == (3, "run-v", True)
        prompt_vectors.forget()
        with pytest.raises(CallRefused, match="no call slot within 0.5s"):  # the window is full: nothing sent
            vocabulary_vectors(conn, provider, ["car", "boat"], "run-w", dsn=pg_dsn, max_wait_seconds=0.5)
        assert fake.created == 3 and len(usage_rows(pg_dsn, "text")) == 1
    prompt_vectors.forget()

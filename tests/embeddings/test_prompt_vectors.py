"""Tag-prompt vectors are embedded once per model and backend and read back by later steps
(``prompt_vectors``), on the real Postgres with the tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.embed_support import image_ids, ingest, query, tiny_clip, write_tree

from assemblage_assets.core import db
from assemblage_assets.embeddings import prompt_vectors
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.embeddings.tags import PROMPT
from resources.embedding import LocalClipEmbedding


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

"""The caption providers and the ``captions`` stage on the real embedded Postgres: a tiny random
BLIP the tests build (loaded through the real ``BLIP_MODEL`` path), OpenAI vision and a Replicate
captioning model against loopback stand-ins driven through their official clients (requests
counted by the servers), full-text search over the stored captions, broken replies recorded per
image, and reruns that never pay twice."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from support.embed_support import (
    COLOURS,
    FakeOpenAI,
    FakeReplicate,
    Reply,
    image_ids,
    ingest,
    photo,
    prediction,
    query,
    write_tree,
)

from assemblage_assets.core import db
from assemblage_assets.dev.tiny_blip import TINY_BLIP_NAME, build_blip2_checkpoint, build_blip_checkpoint
from assemblage_assets.dev.tiny_clip import build_clip_checkpoint
from assemblage_assets.embeddings.caption_assets import captions
from assemblage_assets.embeddings.captions import caption_shard
from assemblage_assets.embeddings.embed import embed_shard
from resources import caption as caption_providers
from resources.caption import BlipCaptions, CaptionItem, NoCaptions, OpenAICaptions, ReplicateCaptions
from resources.database import PostgresResource
from resources.embedding import OpenAIEmbedding
from resources.embedding.types import ProviderConfigError
from resources.image_library import ImageLibraryResource

PRICE_PER_SECOND = 0.001
IN_PER_MTOK, OUT_PER_MTOK = 0.25, 2.0


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blip_checkpoint(tmp_path_factory.mktemp("models") / TINY_BLIP_NAME)


@pytest.fixture
def tree(tmp_path: Path, pg_dsn: str) -> tuple[Path, Path]:
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue", "orange"], "parks": ["green", "white"]})
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    return images, cache


def run(dsn: str, shard: str, provider, cache: Path, **kw):
    with db.connect(dsn) as conn:
        return caption_shard(conn, shard, provider, dsn=dsn, cache_dir=cache, **kw)


def stored(dsn: str) -> dict[str, tuple[str | None, str | None]]:
    rows = query(dsn, "SELECT id::text AS id, caption, caption_model FROM images")
    return {r["id"]: (r["caption"], r["caption_model"]) for r in rows}


def search(dsn: str, words: str) -> set[str]:
    """Images whose caption matches ``words``: the expression of the GIN index of sql/0003."""
    rows = query(dsn, """SELECT id::text AS id FROM images
                         WHERE to_tsvector('english', coalesce(caption, '')) @@ plainto_tsquery('english', %s)""", words)
    return {r["id"] for r in rows}


def caption_costs(dsn: str) -> list[dict]:
    return query(dsn, "SELECT image_id::text AS image_id, provider, model, units, unit, cost_usd::float AS cost, ok "
                      "FROM embedding_usage_log WHERE purpose = 'caption' ORDER BY id")


# ------------------------------------------------------------------------------------- BLIP


def test_tiny_blip_loads_through_the_real_path_and_captions_every_image(pg_dsn: str, tree, tiny_blip: Path) -> None:
    images, cache = tree
    provider = BlipCaptions(blip_model=str(tiny_blip), batch_size=2)
    assert provider.model_id == TINY_BLIP_NAME and provider.random_weights
    loaded = provider.load()
    assert loaded.family == "blip" and loaded.device == "cpu" and loaded.input_side == 32
    # a broken file: source gone and thumbnail damaged; recorded for that image only
    ids = image_ids(pg_dsn, "cars")
    broken = ids["blue-1.jpg"]
    (images / "cars" / "blue-1.jpg").unlink()
    thumb = query(pg_dsn, "SELECT thumbnail_key FROM images WHERE id = %s", broken)[0]["thumbnail_key"]
    (cache / thumb).write_bytes(b"not an image")

    report = run(pg_dsn, "cars", provider, cache, run_id="blip-1")
    assert report.counts["captioned"] == 2 and report.counts["failed"] == 1 and report.random_weights
    assert report.errors_by_kind == {"missing-file": 1}
    captions_now = stored(pg_dsn)
    for name in ("orange-0.jpg", "orange-2.jpg"):
        text, model = captions_now[ids[name]]
        assert text and model == TINY_BLIP_NAME
    assert captions_now[broken] == (None, None)
    (failure,) = query(pg_dsn, "SELECT image_id::text AS id, status, attempts, error_kind, paid FROM caption_failures")
    assert failure == {"id": broken, "status": "retry", "attempts": 1, "error_kind": "missing-file", "paid": False}
    assert caption_costs(pg_dsn) == []  # local: nothing paid, nothing logged

    # a stored caption is found by full-text search (a word of it that is not a stop word)
    text = captions_now[ids["orange-0.jpg"]][0]
    word = next(w for w in text.split() if w not in {"a", "an", "the", "of", "on", "in", "with", "and", "at", "by", "to"})
    assert ids["orange-0.jpg"] in search(pg_dsn, word)

    # rerun: nothing left (the failed one waits for its retry), nothing rewritten
    again = run(pg_dsn, "cars", provider, cache)
    assert again.counts["candidates"] == 0 and stored(pg_dsn) == captions_now
    # the other shard is untouched until its own run
    assert all(stored(pg_dsn)[i] == (None, None) for i in image_ids(pg_dsn, "parks").values())


def test_blip2_checkpoints_load_through_the_same_path(tmp_path: Path) -> None:
    path = build_blip2_checkpoint(tmp_path / "tiny-blip2")
    provider = BlipCaptions(blip_model=str(path), num_beams=1, max_new_tokens=8)
    loaded = provider.load()
    assert loaded.family == "blip-2" and type(loaded.model).__name__ == "Blip2ForConditionalGeneration"
    photo(COLOURS["orange"]).save(tmp_path / "a.jpg")
    (outcome,) = provider.caption_batch([CaptionItem("a", str(tmp_path / "a.jpg"))])
    assert outcome.ok and outcome.caption and "<image>" not in outcome.caption


def test_blip_loading_fails_with_a_clear_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProviderConfigError, match="no such directory"):
        BlipCaptions(blip_model=str(tmp_path / "nowhere")).load()
    clip = build_clip_checkpoint(tmp_path / "clip", "tiny") / "0_CLIPModel"
    with pytest.raises(ProviderConfigError, match="clip checkpoint, not BLIP"):
        BlipCaptions(blip_model=str(clip)).load()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ProviderConfigError, match="no network access to the model hub"):
        BlipCaptions(blip_model="Salesforce/blip-image-captioning-base").load()
    # without BLIP_MODEL: BLIP-2 on a CUDA machine, BLIP base elsewhere or on an explicit CPU device
    import torch

    gpu = torch.cuda.is_available()
    assert BlipCaptions().source == ("Salesforce/blip2-opt-2.7b" if gpu else "Salesforce/blip-image-captioning-base")
    assert BlipCaptions(device="cpu").source == "Salesforce/blip-image-captioning-base"
    assert BlipCaptions(blip_model="/m/blip-large", device="cuda").source == "/m/blip-large"


def test_provider_table_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPTION_PROVIDER", raising=False)
    assert isinstance(caption_providers.from_env(), NoCaptions)
    monkeypatch.setenv("CAPTION_PROVIDER", "replicate")
    monkeypatch.setenv("REPLICATE_CAPTION_MODEL", "owner/captioner")
    monkeypatch.setenv("MAX_EMBEDDING_CALLS_PER_MIN", "7")
    provider = caption_providers.from_env()
    assert isinstance(provider, ReplicateCaptions) and provider.model_id == "replicate:owner/captioner"
    assert provider.max_calls_per_min == 7 and provider.paid
    monkeypatch.setenv("CAPTION_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_VISION_MODEL", "gpt-x")
    assert caption_providers.from_env().model_id == "openai:gpt-x"
    monkeypatch.setenv("CAPTION_PROVIDER", "blip")
    monkeypatch.setenv("BLIP_MODEL", "/models/blip-large")
    assert caption_providers.from_env().model_id == "blip-large"
    monkeypatch.setenv("CAPTION_PROVIDER", "clip")
    with pytest.raises(ValueError, match="CAPTION_PROVIDER must be one of none, blip, openai, replicate"):
        caption_providers.from_env()


# ------------------------------------------------------------------------------------- OpenAI


def openai_captions(fake: FakeOpenAI, **kw) -> OpenAICaptions:
    options = {"api_key": "sk-test", "base_url": f"{fake.url}/v1", "max_calls_per_min": 0, "concurrency": 2,
               "timeout_seconds": 5.0, "price_input_per_mtok": IN_PER_MTOK, "price_output_per_mtok": OUT_PER_MTOK, **kw}
    return OpenAICaptions(**options)


def chat_reply(content: str, prompt: int = 850, completion: int = 40) -> Reply:
    return Reply(200, {
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "gpt-5.4-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })


def test_openai_captions_are_stored_searchable_costed_and_never_bought_twice(pg_dsn: str, tree) -> None:
    _, cache = tree
    with FakeOpenAI() as fake:
        provider = openai_captions(fake, call_attempts=1)  # one try per request: the 500 is recorded
        # one broken reply (billed, unusable), one server error (not billed), the rest fine
        fake.script("POST", "/v1/chat/completions", chat_reply('{"caption": "", "tags": []}'),
                    Reply(500, {"error": {"message": "boom", "type": "server_error"}}))
        report = run(pg_dsn, "cars", provider, cache, run_id="cap-1")
        chats = fake.calls("POST", "/v1/chat/completions")
        assert len(chats) == 3 and fake.calls("POST", "/v1/embeddings") == []
        assert report.counts["captioned"] == 1 and report.counts["failed"] == 2
        assert report.errors_by_kind == {"empty-output": 1, "http-500": 1}
        sent = chats[0].json()["messages"][0]["content"][1]["image_url"]["url"]
        assert sent.startswith("data:image/jpeg;base64,")  # a clean JPEG, no public URL configured

        costs = caption_costs(pg_dsn)
        # cost rows equal billed calls: the captioned one and the broken reply, not the HTTP 500
        assert len(costs) == 2 and sorted(c["ok"] for c in costs) == [False, True]
        assert all(c["provider"] == "openai" and c["model"] == "openai:gpt-5.4-mini" and c["unit"] == "tokens" for c in costs)
        assert sum(c["cost"] for c in costs) == pytest.approx(2 * (850 * IN_PER_MTOK + 40 * OUT_PER_MTOK) / 1e6)
        assert report.cost_usd == pytest.approx(sum(c["cost"] for c in costs)) and report.paid_calls == 2
        failures = {r["error_kind"]: r for r in query(pg_dsn, "SELECT error_kind, paid, status FROM caption_failures")}
        assert failures["empty-output"]["paid"] and not failures["http-500"]["paid"]

        ok = [i for i, (text, _) in stored(pg_dsn).items() if text]
        assert len(ok) == 1 and stored(pg_dsn)[ok[0]] == ("An orange car parked on a street.", "openai:gpt-5.4-mini")
        tags = {r["tag"] for r in query(pg_dsn, "SELECT tag FROM image_tags WHERE model = 'openai:gpt-5.4-mini'")}
        assert tags == {"car", "street", "orange"}
        assert search(pg_dsn, "cars parked on streets") == set(ok)  # stemmed, through to_tsvector
        assert search(pg_dsn, "bicycle") == set()

        # rerun: the stored caption is not bought again, the failures wait for their backoff
        again = run(pg_dsn, "cars", provider, cache, run_id="cap-2")
        assert again.counts["candidates"] == 0 and len(fake.calls("POST", "/v1/chat/completions")) == 3
        assert len(caption_costs(pg_dsn)) == 2
        # once due, exactly the two failed images are asked again (one call each)
        query(pg_dsn, "UPDATE caption_failures SET next_attempt_at = now() - interval '1 second' RETURNING 1")
        retried = run(pg_dsn, "cars", provider, cache, run_id="cap-3")
        assert retried.counts["captioned"] == 2 and len(fake.calls("POST", "/v1/chat/completions")) == 5
        assert len(caption_costs(pg_dsn)) == 4 and query(pg_dsn, "SELECT count(*) AS n FROM caption_failures")[0]["n"] == 0

        # the OpenAI embedding route reuses the stored captions: embeddings only, no chat call
        embedder = OpenAIEmbedding(api_key="sk-test", base_url=f"{fake.url}/v1", dimensions=8, max_calls_per_min=0,
                                   concurrency=1, timeout_seconds=5.0)
        with db.connect(pg_dsn) as conn:
            embedded = embed_shard(conn, "cars", embedder, dsn=pg_dsn, cache_dir=cache)
        assert embedded.counts["embedded"] == 3 and len(fake.calls("POST", "/v1/chat/completions")) == 5
        assert len(fake.calls("POST", "/v1/embeddings")) == 3


def test_openai_rate_limit_is_shared_and_a_429_is_not_billed(pg_dsn: str, tree) -> None:
    _, cache = tree
    with FakeOpenAI() as fake:
        fake.script("POST", "/v1/chat/completions",
                    Reply(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "0"}))
        report = run(pg_dsn, "parks", openai_captions(fake, concurrency=1, max_calls_per_min=50), cache)
        assert report.counts["captioned"] == 2 and len(fake.calls("POST", "/v1/chat/completions")) == 3
        assert len(caption_costs(pg_dsn)) == 2  # the 429 cost nothing
        # the slots came from the provider's shared counter (the one the openai embeddings use)
        windows = query(pg_dsn, "SELECT provider, calls FROM embedding_rate_limit")
        assert [w["provider"] for w in windows] == ["openai"] and sum(w["calls"] for w in windows) == 3
        assert query(pg_dsn, "SELECT provider FROM embedding_provider_pause") == [{"provider": "openai"}]


def test_openai_bad_credentials_fail_the_run_before_writing(pg_dsn: str, tree) -> None:
    _, cache = tree
    with FakeOpenAI() as fake:
        fake.routes[("POST", "/v1/chat/completions")] = lambda s: Reply(401, {"error": {"message": "bad key"}})
        with pytest.raises(ProviderConfigError, match="rejected the credentials"):
            run(pg_dsn, "parks", openai_captions(fake, concurrency=1), cache)
    assert all(text is None for text, _ in stored(pg_dsn).values()) and caption_costs(pg_dsn) == []


# ------------------------------------------------------------------------------------- Replicate


def replicate_captions(fake: FakeReplicate, **kw) -> ReplicateCaptions:
    options = {"api_token": "r8_test", "base_url": fake.url, "timeout_seconds": 5.0, "max_calls_per_min": 0,
               "concurrency": 2, "price_per_second": PRICE_PER_SECOND, "caption_model": "salesforce/blip:2e1d", **kw}
    return ReplicateCaptions(**options)


def test_replicate_captions_through_the_official_client(pg_dsn: str, tree) -> None:
    _, cache = tree
    with FakeReplicate() as fake:
        fake.output_for = lambda seen: "Caption: a green park with tall trees"
        # one prediction that failed (billed for its predict time), one whose output is not text
        fake.script("POST", "/v1/predictions",
                    Reply(201, prediction(None, status="failed", error="CUDA error", predict_time=0.2)),
                    Reply(201, prediction({"vector": [1, 2]}, predict_time=0.4)))
        provider = replicate_captions(fake)
        first = run(pg_dsn, "cars", provider, cache, run_id="rep-1")
        assert first.counts["captioned"] == 1 and first.errors_by_kind == {"prediction-failed": 1, "malformed-output": 1}
        report = run(pg_dsn, "parks", provider, cache, run_id="rep-2")
        assert report.counts["captioned"] == 2 and report.counts["failed"] == 0

        predictions = fake.calls("POST", "/v1/predictions")
        assert len(predictions) == 5 and len(fake.calls("POST", "/v1/files")) == 5  # a clean JPEG upload each
        body = predictions[0].json()
        assert body["version"] == "2e1d" and body["input"]["task"] == "image_captioning"
        assert body["input"]["image"].startswith("https://files.invalid/")

        costs = caption_costs(pg_dsn)
        assert len(costs) == 5 and [c["ok"] for c in costs].count(False) == 2  # every billed prediction
        assert all(c["provider"] == "replicate" and c["model"] == "replicate:salesforce/blip:2e1d" for c in costs)
        assert sum(c["cost"] for c in costs) == pytest.approx((0.2 + 0.4 + 3 * 0.5) * PRICE_PER_SECOND)
        texts = [v for v in stored(pg_dsn).values() if v[0]]
        assert texts == [("a green park with tall trees", "replicate:salesforce/blip:2e1d")] * 3  # prefix stripped
        assert len(search(pg_dsn, "tree parks")) == 3

        for shard in ("cars", "parks"):  # reruns: nothing bought again
            assert run(pg_dsn, shard, provider, cache).counts["candidates"] == 0
        assert len(fake.calls("POST", "/v1/predictions")) == 5 and len(caption_costs(pg_dsn)) == 5

        # the published thumbnail's URL is sent instead of an upload when IMAGE_BASE_URL is set
        query(pg_dsn, "UPDATE images SET thumbnail_url = 'https://cdn.example/t/' || id || '.webp' RETURNING 1")
        query(pg_dsn, "UPDATE caption_failures SET next_attempt_at = now() - interval '1 second' RETURNING 1")
        run(pg_dsn, "cars", replicate_captions(fake, image_base_url="https://cdn.example"), cache)
        sent = [s.json()["input"]["image"] for s in fake.calls("POST", "/v1/predictions")[5:]]
        assert len(sent) == 2 and all(u.startswith("https://cdn.example/t/") for u in sent)
        assert len(fake.calls("POST", "/v1/files")) == 5


# ------------------------------------------------------------------------------------- Dagster


def test_captions_asset_materializes_a_partition_with_its_check(pg_dsn: str, tree, tiny_blip: Path, tmp_path: Path) -> None:
    images, cache = tree
    resources = {
        "database": PostgresResource(dsn=pg_dsn),
        "library": ImageLibraryResource(images_dir=str(images), derivative_cache_dir=str(cache)),
        "caption": BlipCaptions(blip_model=str(tiny_blip)),
    }
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions("image_shards", ["cars", "parks"])
        result = dg.materialize([captions], partition_key="parks", instance=instance, resources=resources)
        assert result.success
        meta = result.asset_materializations_for_node("captions")[0].metadata
        assert meta["captioned"].value == 2 and meta["model"].value == TINY_BLIP_NAME and meta["random_weights"].value
        (check,) = result.get_asset_check_evaluations()
        assert check.passed and check.metadata["captioned"].value == 2 and check.metadata["missing"].value == 0
        off = {**resources, "caption": NoCaptions()}
        skipped = dg.materialize([captions], partition_key="cars", instance=instance, resources=off)
        assert skipped.asset_materializations_for_node("captions")[0].metadata["disabled"].value == 1
    assert sum(1 for text, _ in stored(pg_dsn).values() if text) == 2
    assert json.loads(json.dumps(meta["errors_by_kind"].value)) == {}

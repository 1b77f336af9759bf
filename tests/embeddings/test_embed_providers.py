"""Replicate and OpenAI providers against local HTTP fakes on 127.0.0.1: uploads and public
URLs, both output shapes, cost rows, faults recorded per image (malformed output, wrong
dimension, 4xx/5xx, timeouts), 429 with Retry-After, 429 storms, the shared rate limit, and
reruns that never pay twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.embed_support import (
    FakeOpenAI,
    FakeReplicate,
    Reply,
    fake_vector,
    image_ids,
    ingest,
    prediction,
    query,
    write_tree,
)

from assemblage_assets.core import db
from assemblage_assets.embeddings.embed import embed_shard
from resources.embedding import DEFAULT_REPLICATE_MODEL, OpenAIEmbedding, ReplicateEmbedding
from resources.embedding.types import ProviderConfigError

PRICE_PER_SECOND = 0.001


@pytest.fixture
def tree(tmp_path: Path, pg_dsn: str) -> tuple[Path, Path]:
    images = write_tree(tmp_path / "images", {
        "cars": ["orange", "blue", "orange"],
        "parks": ["green", "white"],
        "mixed": ["orange", "blue", "green", "white", "orange", "blue"],
    })
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    return images, cache


def replicate(fake: FakeReplicate, **kw) -> ReplicateEmbedding:
    options = {"api_token": "r8_test", "base_url": fake.url, "timeout_seconds": 5.0, "max_calls_per_min": 0,
               "concurrency": 1, "price_per_second": PRICE_PER_SECOND, **kw}
    return ReplicateEmbedding(**options)


def run(dsn: str, shard: str, provider, cache: Path, run_id: str = "run-1", **kw):
    with db.connect(dsn) as conn:
        return embed_shard(conn, shard, provider, dsn=dsn, cache_dir=cache, run_id=run_id, **kw)


def test_replicate_uploads_or_sends_public_urls_accepts_both_shapes_and_never_pays_twice(
    pg_dsn: str, tree: tuple[Path, Path]
) -> None:
    _, cache = tree
    with FakeReplicate(dim=768, shape="dict") as fake:
        report = run(pg_dsn, "cars", replicate(fake, concurrency=3), cache)
        assert report.counts["embedded"] == 3 and report.paid_calls == 3
        posts = fake.calls("POST", "/v1/predictions")
        assert len(posts) == 3 and len(fake.uploads) == 3  # no public URL: the files were uploaded
        assert {p.json()["version"] for p in posts} == {DEFAULT_REPLICATE_MODEL.split(":")[1]}
        assert all(p.json()["input"]["image"].startswith("https://files.invalid/") for p in posts)
        assert all(p.headers["authorization"] == "Bearer r8_test" for p in posts)
        assert all(p.headers.get("prefer", "").startswith("wait") for p in posts)
        # uploaded bytes are the cached previews (JPEG)
        assert all(b"Content-Type: image/jpeg" in body and b"\xff\xd8\xff" in body for body in fake.uploads.values())

        # the other output shape, and public URLs of the uploaded previews
        fake.shape = "list"
        ids = image_ids(pg_dsn, "parks")
        with db.connect(pg_dsn) as conn:
            for image_id in ids.values():
                conn.execute("UPDATE images SET preview_url = %s WHERE id = %s",
                             (f"https://cdn.example/watermarked/{image_id}.jpg", image_id))
        report = run(pg_dsn, "parks", replicate(fake, image_base_url="https://cdn.example"), cache, run_id="run-2")
        assert report.counts["embedded"] == 2 and len(fake.uploads) == 3
        sent = {p.json()["input"]["image"] for p in fake.calls("POST", "/v1/predictions")[3:]}
        assert sent == {f"https://cdn.example/watermarked/{i}.jpg" for i in ids.values()}

        rows = query(pg_dsn, "SELECT image_id::text AS id, dim, provider, model, embedding::text AS v FROM image_embeddings")
        assert len(rows) == 5 and {(r["dim"], r["provider"], r["model"]) for r in rows} == {(768, "replicate", DEFAULT_REPLICATE_MODEL)}
        first = next(r for r in rows if r["id"] == next(iter(ids.values())))
        expected = fake_vector(f"https://cdn.example/watermarked/{first['id']}.jpg", 768)
        stored = [float(x) for x in first["v"].strip("[]").split(",")]
        norm = sum(x * x for x in expected) ** 0.5
        assert stored == pytest.approx([x / norm for x in expected], abs=1e-5)

        usage = query(pg_dsn, "SELECT run_id, unit, units::float AS units, cost_usd::float AS cost, ok, purpose FROM embedding_usage_log")
        assert len(usage) == 5 and all(u["unit"] == "seconds" and u["units"] == 0.5 and u["ok"] for u in usage)
        assert sum(u["cost"] for u in usage) == pytest.approx(5 * 0.5 * PRICE_PER_SECOND)
        assert sorted(u["run_id"] for u in usage) == ["run-1"] * 3 + ["run-2"] * 2

        # reruns never pay twice
        before = len(fake.requests)
        for shard in ("cars", "parks"):
            assert run(pg_dsn, shard, replicate(fake), cache, run_id="run-3").counts["candidates"] == 0
        assert len(fake.requests) == before
        assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == 5


def test_replicate_faults_are_recorded_per_image_and_the_shard_carries_on(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeReplicate(dim=768) as fake:
        fake.script(
            "POST", "/v1/predictions",
            Reply(201, prediction({"vector": [0.1] * 768})),  # malformed (paid)
            Reply(201, prediction({"embedding": [0.1] * 512})),  # wrong dimension (paid)
            Reply(201, prediction([])),  # empty (paid)
            Reply(500, {"detail": "upstream exploded"}),
            Reply(422, {"title": "Invalid input", "detail": "image cannot be read"}),
            Reply(201, prediction(None), delay=3.0),  # slower than the timeout
        )
        report = run(pg_dsn, "mixed", replicate(fake, timeout_seconds=1.0), cache)
    assert report.counts["failed"] == 6 and report.counts["queued_for_retry"] == 6 and report.counts["embedded"] == 0
    assert report.errors_by_kind == {
        "malformed-output": 1, "wrong-dimension": 1, "empty-output": 1, "http-500": 1, "http-422": 1, "timeout": 1
    }
    queue = query(pg_dsn, "SELECT error_kind, last_error, retry_count, status FROM embedding_queue")
    assert len(queue) == 6 and all(q["status"] == "retry" and q["retry_count"] == 1 for q in queue)
    assert any("512 dimensions, expected 768" in q["last_error"] for q in queue)
    # the three outputs that came back were paid for: logged as unusable
    usage = query(pg_dsn, "SELECT ok FROM embedding_usage_log")
    assert [u["ok"] for u in usage] == [False, False, False]
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 0


def test_429_honours_retry_after_and_a_storm_reschedules_instead_of_failing(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeReplicate() as fake:
        fake.script("POST", "/v1/predictions", Reply(429, {"detail": "slow down"}, headers={"Retry-After": "1"}))
        report = run(pg_dsn, "parks", replicate(fake), cache)
        assert report.counts["embedded"] == 2 and report.counts["failed"] == 0
        first, second = fake.calls("POST", "/v1/predictions")[:2]
        assert second.at - first.at >= 0.9  # waited for Retry-After before calling again
        assert query(pg_dsn, "SELECT reason FROM embedding_provider_pause")[0]["reason"].startswith("replicate rate limit")

        fake.script("POST", "/v1/predictions", *[Reply(429, {"detail": "no"}, headers={"Retry-After": "0"})] * 50)
        report = run(pg_dsn, "cars", replicate(fake), cache)
    assert report.counts["failed"] == 0 and report.counts["embedded"] == 0 and report.counts["rescheduled"] == 3
    queue = query(pg_dsn, """SELECT retry_count, error_kind, status,
                                    extract(epoch FROM next_attempt_at - now())::float AS due_in FROM embedding_queue""")
    assert len(queue) == 3
    assert all(q["retry_count"] == 0 and q["error_kind"] == "rate-limited" and q["status"] == "retry" for q in queue)
    assert all(20 < q["due_in"] <= 30 for q in queue)
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == 2  # the parks images only


def test_over_the_rate_limit_work_is_rescheduled_never_dropped(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeReplicate() as fake:
        report = run(pg_dsn, "mixed", replicate(fake, max_calls_per_min=1), cache, max_wait_seconds=0.2)
    embedded, rescheduled = report.counts["embedded"], report.counts["rescheduled"]
    assert report.counts["failed"] == 0 and embedded + rescheduled == 6 and 1 <= embedded <= 2  # 2 only across a minute edge
    assert len(fake.calls("POST", "/v1/predictions")) == embedded
    windows = query(pg_dsn, "SELECT calls FROM embedding_rate_limit WHERE provider = 'replicate'")
    assert all(w["calls"] <= 1 for w in windows)
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_queue WHERE error_kind = 'rate-limited'")[0]["n"] == rescheduled


def test_bad_credentials_fail_the_run_with_a_clear_error(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeReplicate() as fake:
        fake.script("POST", "/v1/predictions", *[Reply(401, {"detail": "Invalid token."})] * 5)
        with pytest.raises(ProviderConfigError, match=r"replicate rejected the credentials \(HTTP 401\): Invalid token"):
            run(pg_dsn, "cars", replicate(fake), cache)
    with pytest.raises(ProviderConfigError, match="EXPECTED_VECTOR_DIM=512"):
        run(pg_dsn, "cars", ReplicateEmbedding(api_token="x", base_url="http://127.0.0.1:9", expected_vector_dim=512), cache)
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 0


def test_two_concurrent_runs_of_a_shard_pay_once_per_image(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeReplicate() as fake:
        fake.routes[("POST", "/v1/predictions")] = lambda seen: Reply(201, prediction(fake.output_for(seen)), delay=0.2)
        reports = []
        threads = [
            threading.Thread(target=lambda i=i: reports.append(run(pg_dsn, "mixed", replicate(fake, concurrency=2), cache, run_id=f"r{i}")))
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(fake.calls("POST", "/v1/predictions")) == 6
    assert sum(r.counts["embedded"] for r in reports) == 6
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == 6


_RATE_CHILD = """
import json, sys
from assemblage_assets.embeddings.rate_limit import RateLimiter
limiter = RateLimiter(sys.argv[1], "replicate", 10, window_seconds=3600)
print(json.dumps(sum(limiter.try_acquire() == 0.0 for _ in range(30))))
"""


def test_the_rate_limit_holds_across_two_processes(pg_dsn: str) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _RATE_CHILD, pg_dsn], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    granted = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    windows = query(pg_dsn, "SELECT calls FROM embedding_rate_limit")
    assert sum(granted) == sum(w["calls"] for w in windows)
    assert all(w["calls"] <= 10 for w in windows) and sum(granted) in (10, 20)  # 20 only across an hour edge


def openai_provider(fake: FakeOpenAI, **kw) -> OpenAIEmbedding:
    options = {"api_key": "sk-test", "base_url": f"{fake.url}/v1", "dimensions": 8, "max_calls_per_min": 0,
               "concurrency": 1, "timeout_seconds": 5.0, **kw}
    return OpenAIEmbedding(**options)


def test_openai_route_captions_tags_and_embeds_with_token_costs(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeOpenAI() as fake:
        fake.script("POST", "/v1/chat/completions", Reply(429, {"error": {"message": "slow"}}, headers={"retry-after-ms": "10"}))
        fake.script("POST", "/v1/embeddings", Reply(500, {"error": {"message": "boom", "type": "server_error"}}))
        provider = openai_provider(fake)
        report = run(pg_dsn, "parks", provider, cache)
        assert report.counts["embedded"] == 1 and report.counts["failed"] == 1  # the 500 came after a paid caption
        chats = fake.calls("POST", "/v1/chat/completions")
        assert len(chats) == 3  # one 429, then one caption per image
        content = chats[-1].json()["messages"][0]["content"]
        assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert chats[-1].headers["authorization"] == "Bearer sk-test"
        embeds = fake.calls("POST", "/v1/embeddings")
        assert embeds[-1].json()["input"] == ["An orange car parked on a street.\nTags: car, orange, street"]
        assert embeds[-1].json()["dimensions"] == 8

        # the failed image's caption was paid for: stored, and not bought again on the retry
        with db.connect(pg_dsn) as conn:
            conn.execute("UPDATE embedding_queue SET next_attempt_at = now()")
        report = run(pg_dsn, "parks", provider, cache, run_id="run-2")
        assert report.counts["embedded"] == 1 and len(fake.calls("POST", "/v1/chat/completions")) == 3
    ids = set(image_ids(pg_dsn, "parks").values())
    images = query(pg_dsn, "SELECT id::text AS id, caption, caption_model FROM images WHERE caption IS NOT NULL")
    assert {i["id"] for i in images} == ids and all(i["caption_model"] == "openai:gpt-5.4-mini" for i in images)
    tags = query(pg_dsn, "SELECT DISTINCT tag, model FROM image_tags ORDER BY tag")
    assert [(t["tag"], t["model"]) for t in tags] == [(t, "openai:gpt-5.4-mini") for t in ("car", "orange", "street")]
    rows = query(pg_dsn, "SELECT model, dim FROM image_embeddings")
    assert len(rows) == 2 and {(r["model"], r["dim"]) for r in rows} == {("openai:gpt-5.4-mini+text-embedding-3-small@8", 8)}
    usage = query(pg_dsn, """SELECT input_tokens, output_tokens, cost_usd::float AS cost, ok, run_id
                             FROM embedding_usage_log ORDER BY id""")
    caption_cost = (850 * 0.25 + 40 * 2.0) / 1e6
    embed_cost = 12 * 0.02 / 1e6
    assert sorted((u["input_tokens"], u["output_tokens"], u["ok"]) for u in usage) == [(12, 0, True), (850, 40, False), (862, 40, True)]
    assert sum(u["cost"] for u in usage) == pytest.approx(2 * caption_cost + 2 * embed_cost, rel=1e-4)
    assert any(not u["ok"] and u["cost"] == pytest.approx(caption_cost, rel=1e-4) for u in usage)


def test_openai_wrong_dimension_and_missing_key(pg_dsn: str, tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, cache = tree
    with FakeOpenAI(dim=8) as fake:
        fake.script("POST", "/v1/embeddings", Reply(200, {
            "object": "list", "model": "m", "usage": {"prompt_tokens": 3, "total_tokens": 3},
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5] * 5}],
        }))
        report = run(pg_dsn, "parks", openai_provider(fake), cache)
    assert report.errors_by_kind == {"wrong-dimension": 1} and report.counts["embedded"] == 1
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIEmbedding().client()

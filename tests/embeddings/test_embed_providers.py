"""Replicate and OpenAI providers against local HTTP fakes on 127.0.0.1: uploads and public
URLs (always the clean image, never the watermarked preview), both output shapes, cost rows,
faults recorded per image (malformed output, wrong dimension, 4xx/5xx, timeouts), 429 with
Retry-After, 429 storms, the shared rate limit (one slot per billable request), and reruns that
never pay twice."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from email import policy
from email.parser import BytesParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
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

from assemblage_assets.constants import preview_key
from assemblage_assets.core import db
from assemblage_assets.embeddings import text_calls
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.embeddings.text_calls import CallRefused
from assemblage_assets.embeddings.usage_log import run_cost
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


def uploaded_files(fake: FakeReplicate) -> list[tuple[str, bytes]]:
    """(content type, bytes) of every file the client uploaded (multipart bodies parsed)."""
    files = []
    for seen in fake.calls("POST", "/v1/files"):
        head = f"Content-Type: {seen.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=policy.HTTP).parsebytes(head + seen.body)
        files += [(part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()]
    return files


def _pixels(data: bytes | Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float32)


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that differ visibly (any channel by more than 12)."""
    return float((np.abs(a - b).max(axis=2) > 12).mean())


def assert_clean_images(sent: list[bytes], images: Path, cache: Path, dsn: str, shard: str, size: tuple[int, int]) -> None:
    """Every image sent is a clean rendering of one of the shard's sources, not its watermarked
    preview: not the preview's bytes, and closer to the source than to the preview."""
    sources = {image_id: images / shard / name for name, image_id in image_ids(dsn, shard).items()}
    matched = set()
    for data in sent:
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == size  # sized for the model
        image_id = min(sources, key=lambda i: _differ(_pixels(data, size), _pixels(sources[i], size)))
        preview = cache / preview_key(image_id)
        assert data != preview.read_bytes()
        pixels = _pixels(data, size)
        assert _differ(pixels, _pixels(sources[image_id], size)) < _differ(pixels, _pixels(preview, size))
        matched.add(image_id)
    assert matched == set(sources)


def replicate(fake: FakeReplicate, **kw) -> ReplicateEmbedding:
    options = {"api_token": "r8_test", "base_url": fake.url, "timeout_seconds": 5.0, "max_calls_per_min": 0,
               "concurrency": 1, "price_per_second": PRICE_PER_SECOND, **kw}
    return ReplicateEmbedding(**options)


def publish_at_cdn(dsn: str, shard: str) -> dict[str, str]:
    """Give the shard's images public preview and thumbnail URLs (as IMAGE_BASE_URL would);
    returns their ids by file name."""
    ids = image_ids(dsn, shard)
    with db.connect(dsn) as conn:
        for image_id in ids.values():
            conn.execute("UPDATE images SET preview_url = %s, thumbnail_url = %s WHERE id = %s",
                         (f"https://cdn.example/watermarked/{image_id}.jpg",
                          f"https://cdn.example/thumbnail/{image_id}.webp", image_id))
    return ids


def run(dsn: str, shard: str, provider, cache: Path, run_id: str = "run-1", **kw):
    with db.connect(dsn) as conn:
        return embed_shard(conn, shard, provider, dsn=dsn, cache_dir=cache, run_id=run_id, **kw)


def test_replicate_uploads_or_sends_public_urls_accepts_both_shapes_and_never_pays_twice(
    pg_dsn: str, tree: tuple[Path, Path]
) -> None:
    images, cache = tree
    with FakeReplicate(dim=768, shape="dict") as fake:
        report = run(pg_dsn, "cars", replicate(fake, concurrency=3), cache)
        assert report.counts["embedded"] == 3 and report.paid_calls == 3
        posts = fake.calls("POST", "/v1/predictions")
        assert len(posts) == 3 and len(fake.uploads) == 3  # no public URL: the files were uploaded
        assert {p.json()["version"] for p in posts} == {DEFAULT_REPLICATE_MODEL.split(":")[1]}
        assert all(p.json()["input"]["image"].startswith("https://files.invalid/") for p in posts)
        assert all(p.headers["authorization"] == "Bearer r8_test" for p in posts)
        assert not any("prefer" in p.headers for p in posts)  # created without blocking, then polled
        # uploaded: a clean JPEG sized for CLIP (short edge 224), never the watermarked preview
        files = uploaded_files(fake)
        assert len(files) == 3 and {content_type for content_type, _ in files} == {"image/jpeg"}
        # (the 320x240 sources have 300x225 thumbnails: the short edge brought to 224)
        assert_clean_images([data for _, data in files], images, cache, pg_dsn, "cars", size=(299, 224))

        # the other output shape, and public URLs: the clean thumbnail's, not the preview's
        fake.shape = "list"
        ids = publish_at_cdn(pg_dsn, "parks")
        report = run(pg_dsn, "parks", replicate(fake, image_base_url="https://cdn.example"), cache, run_id="run-2")
        assert report.counts["embedded"] == 2 and len(fake.uploads) == 3
        sent = {p.json()["input"]["image"] for p in fake.calls("POST", "/v1/predictions")[3:]}
        assert sent == {f"https://cdn.example/thumbnail/{i}.webp" for i in ids.values()}

        rows = query(pg_dsn, "SELECT image_id::text AS id, dim, provider, model, embedding::text AS v FROM image_embeddings")
        assert len(rows) == 5 and {(r["dim"], r["provider"], r["model"]) for r in rows} == {(768, "replicate", DEFAULT_REPLICATE_MODEL)}
        first = next(r for r in rows if r["id"] == next(iter(ids.values())))
        expected = fake_vector(f"https://cdn.example/thumbnail/{first['id']}.webp", 768)
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
        # one try per request: each fault reaches the queue (in-call retries: test_transient_faults)
        report = run(pg_dsn, "mixed", replicate(fake, timeout_seconds=1.0, call_attempts=1), cache)
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
from assemblage_assets.embeddings import text_calls
from assemblage_assets.embeddings.rate_limit import RateLimiter
from assemblage_assets.embeddings.text_calls import CallRefused
from assemblage_assets.embeddings.usage_log import run_cost
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
        provider = openai_provider(fake, call_attempts=1)  # the 500 reaches the queue, not an in-call retry
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


def test_openai_reports_count_billable_requests_not_images(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    lines: list[str] = []
    with FakeOpenAI() as fake:
        report = run(pg_dsn, "mixed", openai_provider(fake, concurrency=2), cache, run_id="run-k", progress=lines.append)
        billed = len(fake.calls(*OPENAI_BILLABLE[0])) + len(fake.calls(*OPENAI_BILLABLE[1]))
    images = report.counts["embedded"]
    assert images == 6 and billed == 2 * images  # a caption and an embedding per image
    assert report.paid_calls == billed and f"{billed} paid requests" in lines[-1]
    with db.connect(pg_dsn) as conn:
        assert run_cost(conn, "run-k")["calls"] == billed  # what the asset's paid_requests metadata shows
    rows = query(pg_dsn, "SELECT requests FROM embedding_usage_log WHERE run_id = 'run-k'")
    assert [r["requests"] for r in rows] == [2] * images  # one cost row per image, two requests each


def test_a_429_on_a_text_query_pauses_the_provider_for_every_caller(pg_dsn: str) -> None:
    with FakeOpenAI() as fake, db.connect(pg_dsn) as conn:
        fake.script("POST", "/v1/embeddings", Reply(429, {"error": {"message": "slow"}}, headers={"Retry-After": "30"}))
        provider = openai_provider(fake, max_calls_per_min=10, call_attempts=1)
        with pytest.raises(CallRefused, match="try again in 3[01]s"):  # Retry-After is beyond the 0.5 s budget
            text_calls.embed_texts(conn, provider, ["orange car"], dsn=pg_dsn, max_wait=0.5)
        assert len(fake.requests) == 1  # refused by the provider, then nothing more
        pause = query(pg_dsn, "SELECT extract(epoch FROM paused_until - now())::float AS s FROM embedding_provider_pause")
        assert 25 < pause[0]["s"] <= 30
        with pytest.raises(CallRefused):  # another caller honours the pause without a request
            text_calls.embed_texts(conn, provider, ["green park"], dsn=pg_dsn, max_wait=0.5)
        with RateLimiter(pg_dsn, "openai", 10) as stage:  # and so do the ingest runs
            assert stage.try_acquire(2) > 25
        assert len(fake.requests) == 1 and query(pg_dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == 0


def test_openai_sends_a_clean_data_url_or_the_thumbnail_url_never_the_watermarked_preview(
    pg_dsn: str, tree: tuple[Path, Path]
) -> None:
    images, cache = tree
    with FakeOpenAI() as fake:
        assert run(pg_dsn, "parks", openai_provider(fake), cache).counts["embedded"] == 2
        urls = [c.json()["messages"][0]["content"][1]["image_url"]["url"] for c in fake.calls("POST", "/v1/chat/completions")]
        assert len(urls) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
        # long edge at most 512 (low detail), from the clean source: the 320x240 files as they are
        assert_clean_images([base64.b64decode(u.split(",", 1)[1]) for u in urls], images, cache, pg_dsn, "parks",
                            size=(320, 240))

        ids = publish_at_cdn(pg_dsn, "cars")
        report = run(pg_dsn, "cars", openai_provider(fake, image_base_url="https://cdn.example"), cache, run_id="run-2")
        assert report.counts["embedded"] == 3
        sent = {c.json()["messages"][0]["content"][1]["image_url"]["url"] for c in fake.calls("POST", "/v1/chat/completions")[2:]}
    assert sent == {f"https://cdn.example/thumbnail/{i}.webp" for i in ids.values()}


OPENAI_BILLABLE = (("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"))


def stamp_billable(fake: FakeOpenAI) -> list[float]:
    """Wall-clock times (the database's clock too: the embedded server runs on this machine) of
    every caption and embeddings request the stand-in answers."""
    stamps: list[float] = []
    for route in OPENAI_BILLABLE:
        handler = fake.routes[route]
        fake.routes[route] = lambda seen, handler=handler: (stamps.append(time.time()), handler(seen))[1]
    return stamps


def test_openai_rate_limit_counts_the_caption_and_the_embedding_request(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    window = 3600  # long enough that the test never spans two windows (but at an hour edge)
    with FakeOpenAI() as fake:
        stamps = stamp_billable(fake)
        report = run(pg_dsn, "mixed", openai_provider(fake, max_calls_per_min=4, concurrency=3), cache,
                     max_wait_seconds=0.2, rate_window_seconds=window)
    per_window = Counter(int(t // window) for t in stamps)
    assert max(per_window.values()) <= 4  # two images of two billable requests each, not four images
    embedded, rescheduled = report.counts["embedded"], report.counts["rescheduled"]
    assert report.counts["failed"] == 0 and embedded + rescheduled == 6 and 2 <= embedded <= 4  # 4 only at an hour edge
    assert len(stamps) == 2 * embedded
    windows = query(pg_dsn, "SELECT calls FROM embedding_rate_limit WHERE provider = 'openai'")
    assert all(w["calls"] <= 4 for w in windows) and sum(w["calls"] for w in windows) == len(stamps)
    queue = query(pg_dsn, "SELECT error_kind, retry_count FROM embedding_queue")
    assert len(queue) == rescheduled and all(q["error_kind"] == "rate-limited" and q["retry_count"] == 0 for q in queue)


def test_an_image_whose_caption_is_already_paid_for_takes_one_slot(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    first = min(image_ids(pg_dsn, "mixed").values())  # candidates come in image id order
    with db.connect(pg_dsn) as conn:
        conn.execute("UPDATE images SET caption = 'A white wall.', caption_model = 'openai:gpt-5.4-mini' WHERE id = %s",
                     (first,))
    with FakeOpenAI() as fake:
        stamps = stamp_billable(fake)
        report = run(pg_dsn, "mixed", openai_provider(fake, max_calls_per_min=5), cache,
                     max_wait_seconds=0.2, rate_window_seconds=3600)
        chats, embeds = len(fake.calls(*OPENAI_BILLABLE[0])), len(fake.calls(*OPENAI_BILLABLE[1]))
    # 1 (embedding only) + 2 + 2 slots: three images in the window, the other three rescheduled
    if len(Counter(int(t // 3600) for t in stamps)) == 1:  # else the run spanned an hour edge
        assert (report.counts["embedded"], report.counts["rescheduled"], chats, embeds) == (3, 3, 2, 3)
    assert report.counts["failed"] == 0 and first in {r["id"] for r in query(
        pg_dsn, "SELECT image_id::text AS id FROM image_embeddings")}
    assert sum(w["calls"] for w in query(pg_dsn, "SELECT calls FROM embedding_rate_limit")) == chats + embeds


def test_several_slots_are_taken_all_or_none(pg_dsn: str) -> None:
    with RateLimiter(pg_dsn, "openai", 3, window_seconds=3600) as limiter:
        granted = [limiter.try_acquire(2) == 0.0, limiter.try_acquire(2) == 0.0, limiter.try_acquire(1) == 0.0]
        with pytest.raises(ValueError, match="never fit"):
            limiter.try_acquire(4)
    windows = query(pg_dsn, "SELECT calls FROM embedding_rate_limit")
    if len(windows) == 1:  # else the calls spanned an hour edge
        assert granted == [True, False, True] and windows[0]["calls"] == 3


def test_a_limit_below_the_requests_of_one_image_fails_the_run(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeOpenAI() as fake:
        with pytest.raises(ProviderConfigError, match="MAX_EMBEDDING_CALLS_PER_MIN=1 is below the 2 billable requests"):
            run(pg_dsn, "parks", openai_provider(fake, max_calls_per_min=1), cache)
        assert fake.requests == []


def test_a_429_on_the_embedding_request_does_not_buy_the_caption_again(pg_dsn: str, tree: tuple[Path, Path]) -> None:
    _, cache = tree
    with FakeOpenAI() as fake:
        fake.script("POST", "/v1/embeddings", Reply(429, {"error": {"message": "slow"}}, headers={"retry-after-ms": "10"}))
        report = run(pg_dsn, "parks", openai_provider(fake, max_calls_per_min=100), cache)
        chats, embeds = len(fake.calls(*OPENAI_BILLABLE[0])), len(fake.calls(*OPENAI_BILLABLE[1]))
    assert report.counts["embedded"] == 2 and report.counts["failed"] == 0
    assert (chats, embeds) == (2, 3)  # the retry after the 429 only embeds
    # every request took a slot: 2 + 2 for the images, 1 for the retry
    assert sum(w["calls"] for w in query(pg_dsn, "SELECT calls FROM embedding_rate_limit")) == 5
    # the caption bought before the 429 is on record (cost and text) with the vector it led to
    usage = query(pg_dsn, "SELECT input_tokens, output_tokens, ok FROM embedding_usage_log")
    assert sorted((u["input_tokens"], u["output_tokens"], u["ok"]) for u in usage) == [(862, 40, True)] * 2
    captions = query(pg_dsn, "SELECT caption FROM images WHERE caption IS NOT NULL")
    assert len(captions) == 2


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

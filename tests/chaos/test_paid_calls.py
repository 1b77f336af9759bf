"""Chaos trials of paid embedding runs (issue 14, items 2 and 6), against the loopback Replicate
and OpenAI stand-ins: a run SIGKILLed mid-call, again and again, then finished, buys every image
once (Replicate) or at most the requests in flight at each kill (OpenAI), and its cost log
matches what the stand-in billed; transient faults (500, 429, resets, malformed JSON) are
retried within the call and no image ends errored. Every loop is bounded in rounds and time."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.chaos import FaultyReplicate, finish, kill_rounds, settled_by_another_run, start_embed, trial_shard
from support.embed_support import FakeOpenAI, FakeReplicate, query

from assemblage_assets.core import db
from assemblage_assets.embeddings.embed import embed_shard
from resources.embedding import ReplicateEmbedding

IMAGES = 24
CONCURRENCY = 4
# The stage keeps up to 2 x CONCURRENCY - 1 images submitted: CONCURRENCY running, the rest
# answered but not yet committed (a stalled main thread on a loaded machine) or not yet sent. A
# kill loses at most those answered or running (docs/reliability.md), 2 OpenAI requests each.
IN_FLIGHT = 2 * CONCURRENCY - 1


@pytest.fixture
def shard(tmp_path: Path, pg_dsn: str) -> tuple[str, Path]:
    return trial_shard(pg_dsn, tmp_path, IMAGES)


def replicate_options(fake: FakeReplicate, **kw: object) -> dict[str, object]:
    return {"api_token": "r8_test", "base_url": fake.url, "timeout_seconds": 20.0, "max_calls_per_min": 0,
            "concurrency": 4, "retry_base_seconds": 0.02, **kw}


def one_vector_per_image(dsn: str) -> None:
    rows = query(dsn, "SELECT image_id, count(*) AS n FROM image_embeddings GROUP BY image_id")
    assert len(rows) == IMAGES and all(r["n"] == 1 for r in rows)


def intents(dsn: str) -> dict[str, int]:
    rows = query(dsn, "SELECT state, count(*) AS n FROM paid_call_intents GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def test_killed_replicate_runs_never_buy_an_image_twice_and_log_every_billed_call(
    pg_dsn: str, shard: tuple[str, Path]
) -> None:
    key, cache = shard
    # each prediction runs 0.4 s: kills land while predictions run, right after a create, and
    # between creating and storing the id
    with FakeReplicate(complete_after=0.4) as fake:
        log = kill_rounds(
            lambda i: start_embed(pg_dsn, key, str(cache), "replicate", replicate_options(fake), f"killed-{i}"),
            lambda: fake.created, rounds=5, step=(1, 5), seed=14, total=IMAGES,
        )
        final = finish(start_embed(pg_dsn, key, str(cache), "replicate", replicate_options(fake), "final"))
        rerun = finish(start_embed(pg_dsn, key, str(cache), "replicate", replicate_options(fake), "rerun"))
        billed = fake.created
        creates = len(fake.calls("POST", "/v1/predictions"))
    resumed = settled_by_another_run(pg_dsn, "prediction")
    print(f"\nreplicate kills: {log.kills} at {log.at_counts} created; billed {billed} for {IMAGES} images; "
          f"resumed {resumed} ({log.resumed(final)} by completed runs); intents {intents(pg_dsn)}")
    assert log.kills >= 3  # the trial really killed runs mid-way
    one_vector_per_image(pg_dsn)
    assert billed == IMAGES and creates == IMAGES  # zero re-buys: killed calls were fetched by id
    usage = query(pg_dsn, "SELECT ok, run_id FROM embedding_usage_log")
    assert len(usage) == billed and all(u["ok"] for u in usage)  # the cost log is the stand-in's bill
    # predictions of killed runs were fetched and settled by later runs (killed ones too: the
    # final run has nothing left to resume when the last kill landed after every commit)
    assert resumed >= max(1, log.resumed(final))
    assert rerun["counts"]["candidates"] == 0 and rerun["paid_calls"] == 0
    assert intents(pg_dsn).get("intent", 0) == 0 and intents(pg_dsn).get("created", 0) == 0
    assert intents(pg_dsn).get("lost", 0) == 0


def test_killed_openai_runs_lose_at_most_the_requests_in_flight_and_log_them(
    pg_dsn: str, shard: tuple[str, Path]
) -> None:
    key, cache = shard
    options = {"api_key": "sk-test", "dimensions": 8, "max_calls_per_min": 0, "concurrency": CONCURRENCY,
               "timeout_seconds": 20.0, "retry_base_seconds": 0.02}
    with FakeOpenAI() as fake:
        options["base_url"] = f"{fake.url}/v1"
        for route in (("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings")):
            handler = fake.routes[route]
            fake.routes[route] = lambda seen, handler=handler: _slow(handler(seen))

        def answered() -> int:
            return len(fake.calls("POST", "/v1/chat/completions")) + len(fake.calls("POST", "/v1/embeddings"))

        log = kill_rounds(lambda i: start_embed(pg_dsn, key, str(cache), "openai", options, f"killed-{i}"),
                          answered, rounds=4, step=(2, 8), seed=7)
        finish(start_embed(pg_dsn, key, str(cache), "openai", options, "final"))
        rerun = finish(start_embed(pg_dsn, key, str(cache), "openai", options, "rerun"))
        chats = len(fake.calls("POST", "/v1/chat/completions"))
        embeds = len(fake.calls("POST", "/v1/embeddings"))
    assert log.kills >= 2
    one_vector_per_image(pg_dsn)
    assert rerun["counts"]["candidates"] == 0 and rerun["paid_calls"] == 0
    # requests the cost log accounts for: a settled image's caption + embedding (or the embedding
    # alone when its caption was already stored), one per lost request
    rows = query(pg_dsn, "SELECT ok, input_tokens FROM embedding_usage_log")
    lost = sum(1 for r in rows if not r["ok"])
    accounted = sum(2 if (r["input_tokens"] or 0) > 12 else 1 for r in rows if r["ok"]) + lost
    billed = chats + embeds
    print(f"\nopenai kills: {log.kills}; billed requests {billed} ({chats} captions, {embeds} embeddings) "
          f"for {IMAGES} images; accounted in the cost log {accounted} ({lost} lost); intents {intents(pg_dsn)}")
    assert lost == intents(pg_dsn).get("lost", 0)
    # never under-counted; over-counted only by intents whose request never left a killed process
    assert billed <= accounted <= billed + 2 * CONCURRENCY * log.kills
    # re-bought: at most the requests of the images in flight (2 each) per kill
    assert billed - 2 * IMAGES <= 2 * IN_FLIGHT * log.kills
    assert intents(pg_dsn).get("intent", 0) == 0


def _slow(reply):
    reply.delay = 0.15  # a model's latency: kills land with requests in flight
    return reply


def test_transient_faults_are_retried_within_the_call_and_no_image_ends_errored(
    pg_dsn: str, shard: tuple[str, Path]
) -> None:
    key, cache = shard
    with FaultyReplicate(p500=0.20, p429=0.10, pmalformed=0.05, seed=3) as fake:
        provider = ReplicateEmbedding(**replicate_options(fake, concurrency=2))
        with db.connect(pg_dsn) as conn:
            report = embed_shard(conn, key, provider, dsn=pg_dsn, cache_dir=cache, run_id="faults")
        requests = len(fake.requests)
        billed = fake.created
        injected = dict(fake.injected)
    print(f"\nfaults injected {injected}; {requests} requests, {billed} billed for {IMAGES} images")
    assert sum(injected.values()) >= 5  # the faults were really injected
    assert report.counts["embedded"] == IMAGES and report.counts["failed"] == 0
    assert report.counts["errored"] == 0 and report.counts["queued_for_retry"] == 0
    one_vector_per_image(pg_dsn)
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_queue")[0]["n"] == 0
    # a garbled answer to a create was found again by its input, not bought twice
    assert billed == IMAGES
    assert query(pg_dsn, "SELECT count(*) AS n FROM embedding_usage_log")[0]["n"] == billed
    # bounded work instead of a timed assertion: an upload and a create per image, each tried a
    # few times at most, plus the look-ups after garbled creates
    assert requests <= 2 * IMAGES * 3

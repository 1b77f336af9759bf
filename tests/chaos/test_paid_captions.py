"""Chaos trials of paid caption runs (issue 12's "never bought twice" through issue 14's journal of
paid calls), against the loopback Replicate and OpenAI stand-ins driven through the official
clients: a ``captions`` run SIGKILLed mid-call, again and again, then finished, buys every image
once (Replicate: killed predictions are fetched by their stored id) or at most the requests in
flight at each kill (OpenAI: no id to fetch), and its cost log matches what the stand-in billed
(Replicate) or never under-counts it (OpenAI). Every loop is bounded in rounds and time."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.chaos import finish, kill_rounds, settled_by_another_run, start_stage, trial_shard
from support.embed_support import FakeOpenAI, FakeReplicate, Reply, image_ids, query

from assemblage_assets.embeddings.intents import PaidCallJournal
from resources.embedding.types import Usage

IMAGES = 16
CONCURRENCY = 4
# The stage keeps up to 2 x CONCURRENCY - 1 images submitted: CONCURRENCY requests running, the
# rest answered but not yet committed (or waiting for a worker, not yet sent). A kill loses at
# most those answered or running: the bound of re-bought requests per kill.
IN_FLIGHT = 2 * CONCURRENCY - 1
REPLICATE_MODEL = "salesforce/blip:2e1d"

def start_caption(dsn: str, shard: str, cache: Path, kind: str, options: dict[str, Any], run_id: str) -> subprocess.Popen[str]:
    return start_stage("caption", dsn, shard, cache, kind, options, run_id)


@pytest.fixture
def shard(tmp_path: Path, pg_dsn: str) -> tuple[str, Path]:
    return trial_shard(pg_dsn, tmp_path, IMAGES)


def caption_intents(dsn: str) -> dict[str, int]:
    rows = query(dsn, "SELECT state, count(*) AS n FROM paid_call_intents WHERE request = 'caption' GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def captioned(dsn: str, model: str) -> int:
    return query(dsn, "SELECT count(*) AS n FROM images WHERE caption IS NOT NULL AND caption_model = %s", model)[0]["n"]


def caption_costs(dsn: str) -> list[dict[str, Any]]:
    return query(dsn, "SELECT ok, model, run_id FROM embedding_usage_log WHERE purpose = 'caption'")


def test_killed_replicate_caption_runs_never_buy_an_image_twice(pg_dsn: str, shard: tuple[str, Path]) -> None:
    key, cache = shard
    model = f"replicate:{REPLICATE_MODEL}"
    # An open embedding prediction of one image: the captions' journal must neither resume nor close it.
    some_image = next(iter(image_ids(pg_dsn, key).values()))
    embedding_journal = PaidCallJournal(pg_dsn, "replicate", "krthr/clip-embeddings:1c03", "embed-run", Usage())
    embedding_intent = embedding_journal.intend(some_image, "prediction", {"image": "https://files.invalid/x"})
    embedding_journal.close()

    options = {"api_token": "r8_test", "base_url": "", "timeout_seconds": 20.0, "max_calls_per_min": 0,
               "concurrency": CONCURRENCY, "retry_base_seconds": 0.02, "caption_model": REPLICATE_MODEL}
    # each prediction runs 0.4 s: kills land while predictions run, right after a create, and
    # between creating and storing the id
    with FakeReplicate(complete_after=0.4) as fake:
        fake.output_for = lambda seen: "Caption: a small car parked on a quiet street"
        options["base_url"] = fake.url
        log = kill_rounds(lambda i: start_caption(pg_dsn, key, cache, "replicate", options, f"killed-{i}"),
                          lambda: fake.created, rounds=4, step=(1, 5), seed=12, total=IMAGES)
        final = finish(start_caption(pg_dsn, key, cache, "replicate", options, "final"))
        before_rerun = len(fake.requests)
        rerun = finish(start_caption(pg_dsn, key, cache, "replicate", options, "rerun"))
        billed = fake.created
        creates = len(fake.calls("POST", "/v1/predictions"))
        cancels = [s for s in fake.calls("POST", "/v1/predictions/") if s.path.endswith("/cancel")]
        rerun_requests = len(fake.requests) - before_rerun
    intents_now = caption_intents(pg_dsn)
    resumed = settled_by_another_run(pg_dsn, "caption")
    print(f"\nreplicate caption kills: {log.kills} at {log.at_counts} created; billed {billed} for {IMAGES} images; "
          f"resumed {resumed} ({log.resumed(final)} by completed runs); intents {intents_now}")
    assert log.kills >= 3  # the trial really killed runs mid-way
    assert captioned(pg_dsn, model) == IMAGES
    assert billed == IMAGES and creates == IMAGES and cancels == []  # zero re-buys: fetched by id
    costs = caption_costs(pg_dsn)
    assert len(costs) == billed and all(c["ok"] and c["model"] == model for c in costs)  # the stand-in's bill
    # predictions of killed runs were fetched and settled by later runs (killed ones too: the
    # final run has nothing left to resume when the last kill landed after every commit)
    assert resumed >= max(1, log.resumed(final))
    assert rerun["counts"]["candidates"] == 0 and rerun["paid_calls"] == 0 and rerun_requests == 0
    assert intents_now.get("settled", 0) == IMAGES and intents_now.get("lost", 0) == 0
    assert intents_now.get("intent", 0) == 0 and intents_now.get("created", 0) == 0
    assert {r["model"] for r in query(pg_dsn, "SELECT DISTINCT model FROM paid_call_intents WHERE request = 'caption'")} == {model}
    # the embedding intent of the same image is untouched by the caption runs
    (untouched,) = query(pg_dsn, "SELECT state FROM paid_call_intents WHERE id = %s", embedding_intent)
    assert untouched["state"] == "intent"


def test_killed_openai_caption_runs_lose_at_most_the_requests_in_flight_and_log_them(
    pg_dsn: str, shard: tuple[str, Path]
) -> None:
    key, cache = shard
    model = "openai:gpt-5.4-mini"
    options = {"api_key": "sk-test", "max_calls_per_min": 0, "concurrency": CONCURRENCY, "timeout_seconds": 20.0,
               "retry_base_seconds": 0.02}
    with FakeOpenAI() as fake:
        options["base_url"] = f"{fake.url}/v1"
        handler = fake.routes[("POST", "/v1/chat/completions")]
        fake.routes[("POST", "/v1/chat/completions")] = lambda seen: _slow(handler(seen))

        def billed() -> int:
            return len(fake.calls("POST", "/v1/chat/completions"))

        log = kill_rounds(lambda i: start_caption(pg_dsn, key, cache, "openai", options, f"killed-{i}"),
                          billed, rounds=4, step=(2, 6), seed=12)
        final = finish(start_caption(pg_dsn, key, cache, "openai", options, "final"))
        rerun = finish(start_caption(pg_dsn, key, cache, "openai", options, "rerun"))
        chats = billed()
    costs = caption_costs(pg_dsn)
    ok = sum(1 for c in costs if c["ok"])
    lost = len(costs) - ok
    intents_now = caption_intents(pg_dsn)
    print(f"\nopenai caption kills: {log.kills} at {log.at_counts} requests; billed requests {chats} for {IMAGES} "
          f"images; cost log {len(costs)} rows ({ok} captions, {lost} lost); swept by the final run "
          f"{final['counts'].get('paid_calls_lost', 0)}; intents {intents_now}")
    assert log.kills >= 2
    assert captioned(pg_dsn, model) == IMAGES and ok == IMAGES  # one settled cost row per caption
    assert rerun["counts"]["candidates"] == 0 and rerun["paid_calls"] == 0 and billed() == chats
    assert lost == intents_now.get("lost", 0)  # every lost row is an intent a kill left open
    # never under-counted; over-counted only by intents whose request never left a killed process
    assert chats <= len(costs) <= chats + CONCURRENCY * log.kills
    # re-bought: at most the requests in flight (one per image submitted) per kill
    assert chats - IMAGES <= IN_FLIGHT * log.kills
    assert intents_now.get("intent", 0) == 0 and intents_now.get("created", 0) == 0


def _slow(reply: Reply) -> Reply:
    reply.delay = 0.15  # a model's latency: kills land with requests in flight
    return reply

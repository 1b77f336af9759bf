"""Paid captions through the journal of paid calls (``paid_call_intents``), step by step on the
real embedded Postgres against the loopback stand-ins: a Replicate caption past its timeout is
left running and fetched by id on the next attempt (no second create, no cancel); a create whose
answer was garbled is found again by its input; an OpenAI request whose answer was not seen, or
that a killed run left open, is logged as billed and lost under purpose ``caption``. The kill
trials themselves are ``tests/chaos/test_paid_captions.py``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.embed_support import FakeOpenAI, FakeReplicate, Reply, image_ids, ingest, query, write_tree

from assemblage_assets.core import db
from assemblage_assets.embeddings.captions import caption_shard
from assemblage_assets.embeddings.intents import PaidCallJournal
from resources.caption import OpenAICaptions, ReplicateCaptions
from resources.embedding.types import Usage

REPLICATE_MODEL = "salesforce/blip:2e1d"


@pytest.fixture
def tree(tmp_path: Path, pg_dsn: str) -> Path:
    images = write_tree(tmp_path / "images", {"parks": ["green", "white", "blue"]})
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    return cache


def run(dsn: str, provider, cache: Path, run_id: str):
    with db.connect(dsn) as conn:
        return caption_shard(conn, "parks", provider, dsn=dsn, cache_dir=cache, run_id=run_id)


def intents(dsn: str) -> dict[str, int]:
    rows = query(dsn, "SELECT state, count(*) AS n FROM paid_call_intents WHERE request = 'caption' GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def costs(dsn: str) -> list[dict]:
    return query(dsn, "SELECT ok, cost_usd::float AS cost, run_id FROM embedding_usage_log WHERE purpose = 'caption' ORDER BY id")


def replicate(fake: FakeReplicate, **kw) -> ReplicateCaptions:
    options = {"api_token": "r8_test", "base_url": fake.url, "max_calls_per_min": 0, "concurrency": 2,
               "caption_model": REPLICATE_MODEL, "retry_base_seconds": 0.01, **kw}
    return ReplicateCaptions(**options)


def due_now(dsn: str) -> None:
    query(dsn, "UPDATE caption_failures SET next_attempt_at = now() - interval '1 second' RETURNING 1")


def test_a_replicate_caption_past_its_timeout_is_left_running_and_fetched_by_id(
    pg_dsn: str, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    with FakeReplicate(complete_after=1.5) as fake:
        fake.output_for = lambda seen: "Caption: a green park"
        first = run(pg_dsn, replicate(fake, timeout_seconds=0.4), tree, "slow-1")
        assert first.counts["captioned"] == 0 and first.errors_by_kind == {"timeout": 3}
        assert intents(pg_dsn) == {"created": 3} and costs(pg_dsn) == []  # ids stored, nothing billed yet
        time.sleep(1.5)  # the predictions finish on the provider meanwhile
        due_now(pg_dsn)
        second = run(pg_dsn, replicate(fake, timeout_seconds=5.0), tree, "slow-2")
        creates = len(fake.calls("POST", "/v1/predictions"))
        cancels = [s for s in fake.calls("POST", "/v1/predictions/") if s.path.endswith("/cancel")]
    assert second.counts["captioned"] == 3 and second.counts["paid_calls_resumed"] == 3
    assert creates == 3 and fake.created == 3 and cancels == []  # fetched by id, never bought again
    assert len(fake.calls("POST", "/v1/files")) == 3  # and not uploaded again either
    rows = costs(pg_dsn)
    assert len(rows) == 3 and all(r["ok"] and r["run_id"] == "slow-2" for r in rows)
    assert intents(pg_dsn) == {"settled": 3}


def test_a_garbled_replicate_create_is_found_by_its_input_not_bought_again(pg_dsn: str, tree: Path) -> None:
    with FakeReplicate() as fake:
        fake.output_for = lambda seen: "Caption: a white park bench"
        garbled = []

        def create(seen):  # the first create is accepted, but its answer never arrives readable
            body = fake.create(seen)
            if not garbled:
                garbled.append(body["id"])
                return Reply(201, b'{"id": "trunc')
            return Reply(201, body)

        fake.routes[("POST", "/v1/predictions")] = create
        report = run(pg_dsn, replicate(fake, timeout_seconds=5.0, concurrency=1), tree, "garbled")
        creates = len(fake.calls("POST", "/v1/predictions"))
        lookups = len([s for s in fake.calls("GET", "/v1/predictions") if s.path.split("?")[0] == "/v1/predictions"])
    assert report.counts["captioned"] == 3 and report.counts["failed"] == 0
    assert fake.created == 3 and creates == 3 and lookups == 1 and len(garbled) == 1
    assert len(costs(pg_dsn)) == 3 and intents(pg_dsn) == {"settled": 3}


def test_openai_captions_whose_answer_was_not_seen_are_logged_as_lost(pg_dsn: str, tree: Path) -> None:
    model = "openai:gpt-5.4-mini"
    ids = image_ids(pg_dsn, "parks")
    stale = ids["green-0.jpg"]
    # a killed run's request: its intent is open, nobody can fetch its answer
    killed = PaidCallJournal(pg_dsn, "openai", model, "killed", Usage(), purpose="caption")
    killed.intend(stale, "caption")
    # an open embedding-route request of the same image (another model key): left alone
    other = PaidCallJournal(pg_dsn, "openai", f"{model}+text-embedding-3-small", "embed", Usage())
    other.intend(stale, "caption")
    killed.close()
    other.close()
    with FakeOpenAI() as fake:
        fake.script("POST", "/v1/chat/completions", Reply(200, b'{"choices": [{"mess'))  # billed, unreadable
        provider = OpenAICaptions(api_key="sk-test", base_url=f"{fake.url}/v1", max_calls_per_min=0, concurrency=1,
                                  timeout_seconds=5.0, retry_base_seconds=0.01)
        report = run(pg_dsn, provider, tree, "after-kill")
        chats = len(fake.calls("POST", "/v1/chat/completions"))
    assert report.counts["captioned"] == 3 and report.counts["failed"] == 0  # the garbled reply retried in the call
    assert chats == 4
    rows = costs(pg_dsn)
    lost = [r for r in rows if not r["ok"]]
    # 3 captions + the garbled reply + the killed run's request: never under the stand-in's 4
    assert len(rows) == 5 and len(lost) == 2 and report.counts["paid_calls_lost"] == 2
    assert all(r["cost"] == pytest.approx(provider.estimate_cost_per_image()) for r in lost)
    assert intents(pg_dsn) == {"settled": 3, "lost": 2, "intent": 1}
    (left,) = query(pg_dsn, "SELECT model FROM paid_call_intents WHERE state = 'intent'")
    assert left["model"] == f"{model}+text-embedding-3-small"

"""``assemblage embed``, ``search``, ``provider-test``, the embedding part of ``status`` and the
demo's model fallback, in process, against the real embedded Postgres and local fakes."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from support.embed_support import FakeOpenAI, FakeReplicate, ingest, query, tiny_clip, write_tree
from support.paid_text import fill_window, usage_rows, window_calls

from assemblage_assets import cli
from assemblage_assets.cli import demo
from assemblage_assets.core import db
from assemblage_assets.dev.tiny_clip import TINY_MODEL_NAME
from assemblage_assets.embeddings import retry_queue
from assemblage_assets.embeddings.embed import embed_shard
from resources import embedding
from resources.embedding.clip_encoder import is_random_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("models"))


@pytest.fixture
def tree(assemblage_env: dict[str, str], pg_dsn: str) -> Path:
    images = write_tree(Path(assemblage_env["IMAGES_DIR"]), {"cars": ["orange", "blue", "orange"], "parks": ["green", "white"]})
    ingest(pg_dsn, images, Path(assemblage_env["ASSEMBLAGE_HOME"]) / "derivatives")
    return images


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    capsys.readouterr()
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_embed_search_status_through_the_cli(
    tree: Path, tiny: Path, pg_dsn: str, assemblage_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLIP_MODEL", str(tiny))
    estimate = _json(capsys, ["embed", "--estimate", "--json"])
    assert estimate == {"model": "tiny-clip", "provider": "local_clip", "images": 5, "estimated_cost_usd": 0.0, "per_image_usd": 0.0}
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 0  # nothing spent or written

    assert cli.main(["embed", "--limit", "2"]) == 0
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 2
    monkeypatch.setenv("EMBED_LIMIT", "0")
    assert cli.main(["embed"]) == 0
    assert query(pg_dsn, "SELECT count(*) AS n FROM image_embeddings")[0]["n"] == 5
    instance = dg.DagsterInstance.from_config(assemblage_env["DAGSTER_HOME"])
    assert {r.job_name for r in instance.get_runs()} == {"embed_shard_job"}

    found = _json(capsys, ["search", "orange car", "-k", "3", "--json"])
    assert found["model"] == "tiny-clip" and len(found["results"]) == 3
    assert all(r["path"].startswith(str(tree)) and 0 <= r["distance"] <= 2 for r in found["results"])
    assert [r["distance"] for r in found["results"]] == sorted(r["distance"] for r in found["results"])
    like = _json(capsys, ["search", "--like", str(tree / "cars" / "orange-0.jpg"), "-k", "10", "--json"])
    assert len(like["results"]) == 4 and like["like"] not in {r["image_id"] for r in like["results"]}
    capsys.readouterr()
    assert cli.main(["search", "orange car", "-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert "1 nearest image(s) 'orange car' (tiny-clip" in out and "CARRY NO MEANING" in err

    status = _json(capsys, ["status", "--json"])["embeddings"]
    assert status["active_model"] == "tiny-clip" and status["missing"] == 0
    assert [(m["model"], m["vectors"], m["dim"]) for m in status["models"]] == [("tiny-clip", 5, 16)]
    with db.connect(pg_dsn) as conn:
        (image_id,) = conn.execute("SELECT image_id::text AS id FROM image_embeddings LIMIT 1").fetchone().values()
        conn.execute("DELETE FROM image_embeddings WHERE image_id = %s", (image_id,))
        for _ in range(4):
            retry_queue.record_failures(conn, "tiny-clip", "cars", [(image_id, "http-500", "provider exploded")])
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "embeddings: provider local_clip, active model tiny-clip" in out and "[errored:http-500]" in out
    assert cli.main(["embed", "--reset-errors"]) == 0
    assert "reset 1 errored image(s) for tiny-clip" in capsys.readouterr().out


def test_provider_test_estimate_and_costs_with_replicate(
    tree: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeReplicate(dim=768) as fake:
        for key, value in {
            "EMBEDDING_PROVIDER": "replicate", "REPLICATE_API_TOKEN": "r8_cli", "REPLICATE_BASE_URL": fake.url,
            "REPLICATE_PRICE_PER_CALL": "0.01", "REPLICATE_PRICE_PER_SECOND": "0.002",
        }.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        assert cli.main(["provider-test"]) == 0
        out = capsys.readouterr().out
        assert "dimension: 768 (expected 768)" in out and out.strip().endswith("ok")
        assert fake.calls("POST", "/v1/predictions")[0].headers["authorization"] == "Bearer r8_cli"
        fake.dim = 512
        assert cli.main(["provider-test"]) == 2
        assert "expected 768" in capsys.readouterr().err
    usage = query(pg_dsn, "SELECT purpose, ok, cost_usd::float AS cost FROM embedding_usage_log ORDER BY id")
    assert [(u["purpose"], u["ok"]) for u in usage] == [("provider-test", True), ("provider-test", False)]
    assert usage[0]["cost"] == pytest.approx(0.5 * 0.002)
    estimate = _json(capsys, ["embed", "--estimate", "--json"])
    assert estimate["images"] == 5 and estimate["estimated_cost_usd"] == pytest.approx(0.05)
    assert len(fake.calls("POST", "/v1/predictions")) == 2  # the estimate spent nothing
    cost = _json(capsys, ["status", "--json"])["embeddings"]["cost"]
    assert cost["total_usd"] == pytest.approx(2 * 0.5 * 0.002)


def test_paid_search_and_provider_test_take_slots_of_the_shared_limit_or_are_refused(
    tree: Path, pg_dsn: str, assemblage_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    limit = 3
    with FakeOpenAI() as fake:
        for key, value in {
            "EMBEDDING_PROVIDER": "openai", "OPENAI_API_KEY": "sk-cli", "OPENAI_BASE_URL": f"{fake.url}/v1",
            "OPENAI_EMBEDDING_DIMENSIONS": "8", "MAX_EMBEDDING_CALLS_PER_MIN": "0", "DEFAULT_OWNER": "team-search",
            "TEXT_CALL_MAX_WAIT_SECONDS": "0.5",
        }.items():
            monkeypatch.setenv(key, value)
        with db.connect(pg_dsn) as conn:  # vectors to search (no limit while embedding them)
            embed_shard(conn, "parks", embedding.from_env(), dsn=pg_dsn,
                        cache_dir=Path(assemblage_env["ASSEMBLAGE_HOME"]) / "derivatives", run_id="embed")
        monkeypatch.setenv("MAX_EMBEDDING_CALLS_PER_MIN", str(limit))
        fill_window(pg_dsn, "openai", limit)  # another run holds every slot of this minute
        sent, embeds = len(fake.requests), len(fake.calls("POST", "/v1/embeddings"))

        for argv in (["search", "orange car"], ["provider-test"]):
            capsys.readouterr()
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert "openai is busy: no call slot within 0.5s" in err and "Nothing was sent; try again in" in err
        assert len(fake.requests) == sent and window_calls(pg_dsn, "openai") == limit
        assert usage_rows(pg_dsn, "text") == [] and usage_rows(pg_dsn, "provider-test") == []

        monkeypatch.setenv("MAX_EMBEDDING_CALLS_PER_MIN", str(limit + 1))  # room for one request
        found = _json(capsys, ["search", "orange car", "-k", "2", "--json"])
        assert len(found["results"]) == 2 and len(fake.calls("POST", "/v1/embeddings")) == embeds + 1
        assert window_calls(pg_dsn, "openai") == limit + 1  # exactly one slot
        (row,) = usage_rows(pg_dsn, "text")
        assert (row["provider"], row["requests"], row["ok"], row["owner"], row["image_id"]) == (
            "openai", 1, True, "team-search", None)
        assert cli.main(["search", "orange car"]) == 2  # the window is full again
        assert len(fake.requests) == sent + 1

        monkeypatch.setenv("MAX_EMBEDDING_CALLS_PER_MIN", str(limit + 3))  # a caption and an embedding
        assert cli.main(["provider-test"]) == 0
        assert len(fake.requests) == sent + 3 and window_calls(pg_dsn, "openai") == limit + 3
        (row,) = usage_rows(pg_dsn, "provider-test")
        assert (row["requests"], row["ok"], row["owner"]) == (2, True, "team-search")
    assert len(usage_rows(pg_dsn, "text")) == 1  # a refused query logs nothing


def test_demo_uses_a_tiny_model_only_when_allowed_and_says_so(
    assemblage_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no traffic leaves the machine
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "st"))
    monkeypatch.delenv("CLIP_MODEL", raising=False)
    monkeypatch.delenv("ASSEMBLAGE_DEMO_TINY_MODEL", raising=False)
    with pytest.raises(SystemExit, match="no network access to the model hub"):
        demo.prepare_demo_model(allow_tiny=False)
    tiny = demo.prepare_demo_model(allow_tiny=True)
    out = capsys.readouterr().out
    assert tiny == str(Path(assemblage_env["ASSEMBLAGE_HOME"]) / "models" / TINY_MODEL_NAME) and is_random_checkpoint(tiny)
    assert "VECTORS CARRY NO MEANING" in out and "DEMO ONLY" in out
    import os

    assert os.environ["CLIP_MODEL"] == tiny
    monkeypatch.setenv("CLIP_MODEL", str(tmp_path / "missing"))
    monkeypatch.setenv("ASSEMBLAGE_DEMO_TINY_MODEL", "1")
    assert demo.prepare_demo_model(allow_tiny=False) == tiny

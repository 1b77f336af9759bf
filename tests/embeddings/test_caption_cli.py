"""``assemblage caption`` and the demo's caption step, in process, against the real embedded
Postgres, with the tiny random BLIP the tests build."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from support.embed_support import ingest, query, write_tree

from assemblage_assets import cli
from assemblage_assets.cli import captions as caption_cli
from assemblage_assets.dev.tiny_blip import TINY_BLIP_NAME, build_blip_checkpoint
from resources.caption import TINY_BLIP_WARNING
from resources.caption.blip import is_random_checkpoint


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blip_checkpoint(tmp_path_factory.mktemp("models") / TINY_BLIP_NAME)


@pytest.fixture
def tree(assemblage_env: dict[str, str], pg_dsn: str) -> Path:
    images = write_tree(Path(assemblage_env["IMAGES_DIR"]), {"cars": ["orange", "blue", "orange"], "parks": ["green", "white"]})
    ingest(pg_dsn, images, Path(assemblage_env["ASSEMBLAGE_HOME"]) / "derivatives")
    return images


def captioned(dsn: str) -> int:
    return query(dsn, "SELECT count(*) AS n FROM images WHERE caption IS NOT NULL")[0]["n"]


def test_caption_command_estimates_then_captions_through_dagster(
    tree: Path, tiny_blip: Path, pg_dsn: str, assemblage_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CAPTION_PROVIDER", raising=False)
    assert cli.main(["caption"]) == 2 and "CAPTION_PROVIDER is not set" in capsys.readouterr().err
    monkeypatch.setenv("CAPTION_PROVIDER", "blip")
    monkeypatch.setenv("BLIP_MODEL", str(tiny_blip))
    assert cli.main(["caption", "--estimate", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate == {"model": TINY_BLIP_NAME, "provider": "blip", "images": 5, "estimated_cost_usd": 0.0,
                        "per_image_usd": 0.0}
    assert captioned(pg_dsn) == 0  # nothing written by an estimate

    assert cli.main(["caption", "--limit", "2"]) == 0
    assert captioned(pg_dsn) == 2
    assert cli.main(["caption"]) == 0
    assert captioned(pg_dsn) == 5
    capsys.readouterr()
    assert cli.main(["caption"]) == 0 and "nothing to caption" in capsys.readouterr().out
    instance = dg.DagsterInstance.from_config(assemblage_env["DAGSTER_HOME"])
    assert {r.job_name for r in instance.get_runs()} == {"caption_shard_job"}


def test_demo_uses_the_tiny_blip_only_behind_its_flag_and_says_so(
    assemblage_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CAPTION_PROVIDER", "blip")
    monkeypatch.setenv("BLIP_MODEL", "Salesforce/blip-image-captioning-base")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("ASSEMBLAGE_DEMO_TINY_MODEL", raising=False)
    with pytest.raises(SystemExit, match="--allow-tiny-model"):
        caption_cli.prepare_demo_captioner(False)
    tiny = caption_cli.prepare_demo_captioner(True)
    out = capsys.readouterr().out
    assert tiny and is_random_checkpoint(tiny) and Path(tiny).parent == Path(assemblage_env["ASSEMBLAGE_HOME"]) / "models"
    assert f"DEMO ONLY: {TINY_BLIP_WARNING}" in out and "CAPTIONS CARRY NO MEANING" in out
    import os

    assert os.environ["BLIP_MODEL"] == tiny
    monkeypatch.setenv("CAPTION_PROVIDER", "none")
    assert caption_cli.prepare_demo_captioner(True) is None

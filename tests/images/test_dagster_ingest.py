"""The spine through Dagster: definitions load, assets materialize per shard, the sensor
registers shards, and the CLIs (`dagster asset materialize`, `assemblage ingest`) work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg

from assemblage_assets.dev.sample_data import write_sample_tree
from assemblage_assets.images.assets import derivatives, raw_files
from assemblage_assets.images.sensors import image_shards_sensor
from assemblage_assets.images.shards import ROOT_SHARD_KEY, shard_key
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource

BIN = Path(sys.executable).parent


def _count(dsn: str, sql: str, *params) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_definitions_load(assemblage_env: dict[str, str]) -> None:
    from assemblage_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    assert {"raw_files", "derivatives"} <= {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_materialize_one_shard_with_metadata(assemblage_env: dict[str, str], tmp_path: Path) -> None:
    tree = write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=3)
    key = shard_key("Ferien Sommer 2023")
    resources = {
        "database": PostgresResource(dsn=assemblage_env["DATABASE_URL"]),
        "library": ImageLibraryResource(images_dir=str(tree.root), derivative_cache_dir=str(tmp_path / "cache")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, [key])
        result = dg.materialize([raw_files, derivatives], partition_key=key, instance=instance, resources=resources)
    assert result.success
    scan_meta = result.asset_materializations_for_node("raw_files")[0].metadata
    derive_meta = result.asset_materializations_for_node("derivatives")[0].metadata
    assert scan_meta["seen"].value == 5 and scan_meta["rejected"].value == 1  # 3 photos + png + notes.txt
    assert derive_meta["processed"].value == 4
    assert "notes.txt" in scan_meta["failures"].value
    assert "#" in derive_meta["samples"].value  # palette swatches in the UI table
    dsn = assemblage_env["DATABASE_URL"]
    assert _count(dsn, "SELECT count(*) FROM processing_log WHERE shard = %s AND status = 'processed'", key) == 4
    assert _count(dsn, "SELECT count(DISTINCT shard) FROM processing_log") == 1  # other shards untouched


def test_sensor_registers_new_shards_and_requests_their_runs(assemblage_env: dict[str, str]) -> None:
    tree = write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=3)
    instance = dg.DagsterInstance.ephemeral()
    library = ImageLibraryResource(images_dir=str(tree.root), derivative_cache_dir="/unused")
    with dg.build_sensor_context(instance=instance, resources={"library": library}) as context:
        result = image_shards_sensor(context)
    expected = sorted([shard_key(name) for name in tree.shards] + [ROOT_SHARD_KEY])
    (request,) = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == expected
    assert sorted(r.partition_key for r in result.run_requests) == expected
    instance.add_dynamic_partitions(IMAGE_SHARDS, request.partition_keys)
    with dg.build_sensor_context(instance=instance, resources={"library": library}) as context:
        again = image_shards_sensor(context)
    assert isinstance(again, dg.SkipReason)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_dagster_asset_materialize_cli_on_one_shard(assemblage_env: dict[str, str]) -> None:
    write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=3)
    _run([str(BIN / "assemblage"), "shards", "--register"], assemblage_env)
    _run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "assemblage_assets.definitions",
         "--select", "raw_files,derivatives", "--partition", "street-2019"],
        assemblage_env,
    )
    dsn = assemblage_env["DATABASE_URL"]
    assert _count(dsn, "SELECT count(*) FROM processing_log WHERE shard = 'street-2019' AND status = 'processed'") == 3
    assert _count(dsn, "SELECT count(*) FROM processing_log WHERE shard <> 'street-2019'") == 0


def test_assemblage_ingest_and_status_cli(assemblage_env: dict[str, str]) -> None:
    tree = write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=3)
    out = _run([str(BIN / "assemblage"), "ingest", "--images-dir", str(tree.root)], assemblage_env).stdout
    assert f"{len(tree.shards) + 1}/{len(tree.shards) + 1} shard run(s) succeeded" in out
    status = json.loads(_run([str(BIN / "assemblage"), "status", "--json"], assemblage_env).stdout)
    counts = status["status_counts"]
    assert counts["failed"] == tree.expected_failed and counts["rejected"] == tree.expected_rejected
    assert counts["processed"] + counts.get("uploaded", 0) + counts.get("indexed", 0) == tree.expected_ok
    assert {Path(f["local_path"]).name for f in status["failures"]} >= {"empty.jpg", "truncated.jpg", "notes.txt"}
    # runs are recorded in the instance the UI reads
    instance = dg.DagsterInstance.from_config(assemblage_env["DAGSTER_HOME"])
    assert len(instance.get_runs()) == len(tree.shards) + 1
    assert set(instance.get_dynamic_partitions(IMAGE_SHARDS)) == {shard_key(n) for n in tree.shards} | {ROOT_SHARD_KEY}

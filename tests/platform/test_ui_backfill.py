"""The UI path end to end: `dagster dev` on loopback with the managed instance (Postgres storage),
inspected and driven through GraphQL like the UI's "Materialize" -> backfill dialog does."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from support.dagster_ui import DagsterUI

from assemblage_assets.dev.sample_data import SampleTree, write_sample_tree
from assemblage_assets.images.sensors import register_shards
from assemblage_assets.images.shards import discover_shards
from assemblage_assets.platform.dagster_home import ensure_dagster_home

ASSETS = {"raw_files", "derivatives", "r2_objects", "embeddings", "vehicle_image_backfill"}
SENSORS = {"image_shards_sensor", "missing_embeddings_sensor"}
SCHEDULES = {"trickle_backfill_schedule", "retry_queue_schedule"}
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      error { message }
      runs { runId status tags { key value } }
    }
    ... on PythonError { message }
  }
}
"""

PARTITION_KEYS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { isPartitioned partitionKeys }
  }
}
"""


@pytest.fixture
def sample_tree(assemblage_env: dict[str, str]) -> SampleTree:
    return write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=2, photo_size=(640, 480))


@pytest.fixture
def ui(assemblage_env: dict[str, str], sample_tree: SampleTree, tmp_path: Path) -> Iterator[DagsterUI]:
    images = sample_tree.root
    ensure_dagster_home()  # managed dagster.yaml: Postgres storage in the test database
    with dg.DagsterInstance.get() as instance:
        register_shards(instance, images)  # what `assemblage shards --register` does
    server = DagsterUI(dict(os.environ), tmp_path / "dagster-dev.log")
    try:
        yield server
    finally:
        server.stop()


def test_backfill_two_shards_through_graphql(ui: DagsterUI, sample_tree: SampleTree) -> None:
    try:
        _check_and_backfill(ui, sample_tree)
    except BaseException:
        print(f"--- dagster dev log ({ui.log_path}) ---\n{ui.log()[-20000:]}")
        raise


def _check_and_backfill(ui: DagsterUI, tree: SampleTree) -> None:
    entry = ui.wait_until_loaded()
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    (repo,) = location["repositories"]
    assert ASSETS <= {"/".join(n["assetKey"]["path"]) for n in repo["assetNodes"]}
    assert SENSORS <= {s["name"] for s in repo["sensors"]}
    assert SCHEDULES <= {s["name"] for s in repo["schedules"]}

    shards = {s.key: s for s in discover_shards(tree.root)}
    node = ui.graphql(PARTITION_KEYS, {"path": ["raw_files"]})["assetNodeOrError"]
    assert node["isPartitioned"] and set(node["partitionKeys"]) == set(shards)

    chosen = sorted(k for k, s in shards.items() if s.recursive)[:2]
    assert len(chosen) == 2
    params = {
        "partitionNames": chosen,
        "assetSelection": [{"path": [name]} for name in ("raw_files", "derivatives", "r2_objects")],
        "tags": [{"key": "assemblage/trigger", "value": "test_ui_backfill"}],
        "title": "two shards from the test",
    }
    launched = ui.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    # the daemon picks the backfill up, queues and runs two runs: 145 s for the whole test on a
    # loaded 2-core machine, so a bound well above that (under pytest-timeout's 600 s with the
    # 90 s load wait), not a timing claim
    deadline = time.monotonic() + 360
    backfill = {}
    while time.monotonic() < deadline:
        backfill = ui.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        runs_done = backfill["runs"] and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in backfill["runs"])
        if backfill["status"] in TERMINAL_BACKFILL and runs_done:
            break
        time.sleep(2)
    else:
        pytest.fail(f"backfill {backfill_id} not finished in time: {backfill}")

    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, backfill
    runs = backfill["runs"]
    assert [r["status"] for r in runs] == ["SUCCESS", "SUCCESS"], runs
    partitions = sorted(next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in runs)
    assert partitions == chosen

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT shard, local_path, status FROM processing_log WHERE shard = ANY(%s)", (chosen,)
        ).fetchall()
        stored_runs = conn.execute(
            "SELECT count(*) FROM dagster.runs WHERE run_id = ANY(%s) AND status = 'SUCCESS'",
            ([r["runId"] for r in runs],),
        ).fetchone()
    assert stored_runs == (2,)  # the UI's runs live in the project database, schema dagster
    status_of = {path: status for _, path, status in rows}
    for key in chosen:
        root = shards[key].path
        ok = [str(p) for p in (tree.root / rel for rel in tree.ok) if p.is_relative_to(root)]
        assert ok, f"the sample tree has no valid image in shard {key}"
        assert {status_of.get(p) for p in ok} == {"uploaded"}, {p: status_of.get(p) for p in ok}
        # the rest of the shard was recorded as failed/rejected; nothing is left half-done
        assert {status for shard, _, status in rows if shard == key} <= {"uploaded", "failed", "rejected"}

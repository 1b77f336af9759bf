"""vehicle_image_backfill end to end against the real embedded Postgres, a local object store
directory and the loopback image server (traffic to 127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from support.image_server import ImageServer

from assemblage_assets.cli.status import print_status
from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec, image_id_for
from assemblage_assets.partitions import NO_ORGANIZATION, VEHICLE_ORGANIZATIONS
from assemblage_assets.vehicles import backfill, records
from assemblage_assets.vehicles.assets import vehicle_image_backfill
from assemblage_assets.vehicles.backfill import BackfillOptions
from assemblage_assets.vehicles.jobs import vehicle_backfill_job
from resources.database import PostgresResource
from resources.image_fetch import ImageFetchResource
from resources.image_fetch.client import FetchSettings, ImageFetcher
from resources.image_library import ImageLibraryResource
from resources.object_store import LocalObjectStore, content_type_for
from schedules.trickle_backfill import trickle_backfill_schedule

BIN = Path(sys.executable).parent
FAST = dict(allow_hosts="127.0.0.1", connect_timeout=2.0, read_timeout=0.5, total_timeout=5.0, max_bytes=200_000)
NO_PAUSE = BackfillOptions(pause_seconds=0)
ORG_A, ORG_B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with db.connect(pg_dsn) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(tmp_path / "objects"))


@pytest.fixture
def fetcher() -> Iterator[ImageFetcher]:
    with ImageFetcher(FetchSettings(**FAST)) as f:
        yield f


def add_vehicle(
    conn: psycopg.Connection, urls: list[Any] | None, org: str | None = None, public: bool = True, **meta: Any
) -> str:
    metadata = {"source": "test", **meta}
    if urls is not None:
        metadata["image_urls"] = urls
    return conn.execute(
        "INSERT INTO vehicles (organization_id, is_public, origin_metadata) VALUES (%s, %s, %s) RETURNING id::text AS id",
        (org, public, Jsonb(metadata)),
    ).fetchone()["id"]


def metadata_of(conn: psycopg.Connection, vehicle_id: str) -> dict[str, Any]:
    return conn.execute("SELECT origin_metadata FROM vehicles WHERE id = %s", (vehicle_id,)).fetchone()[
        "origin_metadata"
    ]


def images_of(conn: psycopg.Connection, vehicle_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM vehicle_images WHERE vehicle_id = %s ORDER BY position", (vehicle_id,)
    ).fetchall()


def run(conn, org, fetcher, store, options: BackfillOptions = NO_PAUSE) -> backfill.BackfillReport:
    return backfill.backfill_organization(
        conn, org, fetcher=fetcher, store=store, spec=DerivativeSpec(), options=options
    )


def files_under(root: str | Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).exists() else []


# --- the backfill --------------------------------------------------------------------------------


def test_a_vehicle_with_thirty_urls_yields_twenty_images(conn, server, fetcher, store) -> None:
    urls = [server.url(f"/img/{n}.jpg") for n in range(30)]
    vid = add_vehicle(conn, urls, ORG_A)
    report = run(conn, ORG_A, fetcher, store)
    assert report.counts["vehicles_backfilled"] == 1 and report.counts["images_stored"] == 20
    rows = images_of(conn, vid)
    assert [r["position"] for r in rows] == list(range(20))
    assert [r["source_url"] for r in rows] == urls[:20]
    assert {(r["width"], r["height"], r["mime_type"]) for r in rows} == {(640, 480, "image/jpeg")}
    assert len({r["content_hash"] for r in rows}) == 20
    first = rows[0]
    assert first["object_key"] == f"vehicles/{vid}/{image_id_for(first['content_hash'])}.jpg"
    original = Path(store.root) / first["object_key"]
    assert original.read_bytes() == server.image(0) and first["image_url"] == original.as_uri()
    with Image.open(Path(store.root) / first["thumbnail_key"]) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (300, 225)
    assert len(files_under(Path(store.root) / "vehicles" / vid)) == 40  # 20 originals + 20 thumbnails
    meta = metadata_of(conn, vid)
    assert meta["images_backfilled"] is True and meta["images_backfilled_count"] == 20
    assert meta["images_backfill_failures"] == [] and meta["image_urls"] == urls and meta["source"] == "test"
    assert datetime.fromisoformat(meta["images_backfilled_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert not any(p.startswith(("/img/20.", "/img/29.")) for p in server.paths())


def test_listing_thumbnails_follow_the_thumbnail_spec(conn, server, fetcher, store) -> None:
    """THUMBNAIL_SIZE=200 THUMBNAIL_FORMAT=jpeg (the older system's thumbnails) for listings too."""
    vid = add_vehicle(conn, [server.url("/img/1.jpg"), server.url("/img/2.png")], ORG_A)
    spec = DerivativeSpec(thumbnail_box=200, thumbnail_format="jpeg")
    report = backfill.backfill_organization(conn, ORG_A, fetcher=fetcher, store=store, spec=spec, options=NO_PAUSE)
    assert report.counts["images_stored"] == 2
    for row, source in zip(images_of(conn, vid), (server.image(1), server.image(2, "PNG")), strict=True):
        image_id = image_id_for(row["content_hash"])
        assert row["thumbnail_key"] == f"vehicles/{vid}/thumbnail/{image_id}.jpg"
        assert content_type_for(row["thumbnail_key"]) == "image/jpeg"
        assert (Path(store.root) / row["object_key"]).read_bytes() == source  # the original, not the thumbnail
        with Image.open(Path(store.root) / row["thumbnail_key"]) as thumb:
            assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "RGB", (200, 150))


def test_bad_urls_are_recorded_with_their_reasons(conn, server, fetcher, store) -> None:
    bad = {
        "/status/404": "http-error",
        "/status/500": "http-error",
        "/slow/3": "timeout",
        "/html-as-image.jpg": "not-an-image",
        "/huge-streamed.jpg": "too-large",
        "/truncated.jpg": "corrupt",
        "/loop/a": "redirect-loop",
        f"/redirect?to=http://127.0.0.2:{server.port}/img/1.jpg": "refused-address",
    }
    urls = [
        server.url("/img/100.jpg"),
        *(server.url(p) for p in bad),
        "ftp://127.0.0.1/x.jpg",
        {"url": server.url("/img/101.png")},
    ]
    vid = add_vehicle(conn, urls, ORG_A)
    before = len(server.requests)
    run(conn, ORG_A, fetcher, store)
    assert [r["source_url"] for r in images_of(conn, vid)] == [urls[0], server.url("/img/101.png")]
    meta = metadata_of(conn, vid)
    assert meta["images_backfilled"] is True and meta["images_backfilled_count"] == 2
    kinds = [(f["url"], f["kind"]) for f in meta["images_backfill_failures"]]
    assert kinds == [(server.url(p), k) for p, k in bad.items()] + [("ftp://127.0.0.1/x.jpg", "refused-scheme")]
    assert all(f["reason"] for f in meta["images_backfill_failures"])
    assert "/img/1.jpg" not in server.paths()[before:]  # the refused redirect was not followed


def test_a_vehicle_whose_urls_are_all_refused_fails_at_once(conn, server, fetcher, store) -> None:
    """A refusal (address guard, scheme, credentials, no URL at all) is the same on every try."""
    refused = [
        f"http://127.0.0.2:{server.port}/img/1.jpg",  # loopback outside FETCH_ALLOW_HOSTS
        "ftp://127.0.0.1/x.jpg",
        f"http://user:secret@127.0.0.1:{server.port}/img/2.jpg",
        "not a url",
    ]
    vid = add_vehicle(conn, refused, ORG_A)
    before = len(server.requests)
    report = run(conn, ORG_A, fetcher, store, BackfillOptions(pause_seconds=0, max_attempts=5))
    assert report.counts["vehicles_failed"] == 1 and report.counts["vehicles_retrying"] == 0
    meta = metadata_of(conn, vid)
    assert meta["images_backfill_status"] == "failed" and meta["images_backfill_attempts"] == 1
    assert "images_backfill_next_attempt_at" not in meta
    assert {f["kind"] for f in meta["images_backfill_failures"]} == {"refused-address", "refused-scheme", "invalid-url"}
    assert len(server.requests) == before  # nothing was fetched
    assert run(conn, ORG_A, fetcher, store).counts["vehicles_selected"] == 0  # and never tried again

    # one refusal among errors that may pass next time: retried as before
    vid = add_vehicle(conn, ["ftp://127.0.0.1/y.jpg", server.url("/status/500")], ORG_A)
    assert run(conn, ORG_A, fetcher, store).counts["vehicles_retrying"] == 1
    assert metadata_of(conn, vid)["images_backfill_status"] == "retrying"


def test_a_vehicle_whose_urls_all_fail_is_retried_with_backoff_then_marked_failed(conn, server, fetcher, store) -> None:
    vid = add_vehicle(conn, [server.url("/status/404"), server.url("/html-as-image.jpg")], ORG_A)
    options = BackfillOptions(pause_seconds=0, max_attempts=3, retry_backoff_minutes=10)

    def make_due() -> None:
        conn.execute(
            """UPDATE vehicles SET origin_metadata = origin_metadata
                   || jsonb_build_object('images_backfill_next_attempt_at', (now() - interval '1 second')::text)
               WHERE id = %s""",
            (vid,),
        )

    started = datetime.now(UTC)
    assert run(conn, ORG_A, fetcher, store, options).counts["vehicles_retrying"] == 1
    meta = metadata_of(conn, vid)
    assert meta["images_backfill_status"] == "retrying" and meta["images_backfill_attempts"] == 1
    assert "images_backfilled" not in meta and images_of(conn, vid) == []
    wait = datetime.fromisoformat(meta["images_backfill_next_attempt_at"]) - started
    assert timedelta(minutes=9) < wait < timedelta(minutes=11)
    assert [r["kind"] for r in meta["images_backfill_failures"]] == ["http-error", "not-an-image"]
    assert run(conn, ORG_A, fetcher, store, options).counts["vehicles_selected"] == 0  # backing off
    assert records.monitoring(conn)["retrying"] == 1

    make_due()
    run(conn, ORG_A, fetcher, store, options)
    meta = metadata_of(conn, vid)
    assert meta["images_backfill_attempts"] == 2
    assert datetime.fromisoformat(meta["images_backfill_next_attempt_at"]) - started > timedelta(minutes=19)

    make_due()
    assert run(conn, ORG_A, fetcher, store, options).counts["vehicles_failed"] == 1
    meta = metadata_of(conn, vid)
    assert meta["images_backfill_status"] == "failed" and meta["images_backfill_attempts"] == 3
    make_due()
    assert run(conn, ORG_A, fetcher, store, options).counts["vehicles_selected"] == 0  # given up for good
    status = records.monitoring(conn)
    assert (status["failed"], status["needing_backfill"], status["backfilled"]) == (1, 0, 0)
    assert {(f["url"], f["vehicle_status"]) for f in status["failed_urls"]} == {
        (server.url("/status/404"), "failed"),
        (server.url("/html-as-image.jpg"), "failed"),
    }


def test_dry_run_lists_and_writes_nothing(conn, server, fetcher, store) -> None:
    urls = [server.url(f"/img/{n}.jpg") for n in range(25)]
    vid = add_vehicle(conn, urls, ORG_A)
    before_meta, before_requests = metadata_of(conn, vid), len(server.requests)
    report = run(conn, ORG_A, fetcher, store, BackfillOptions(dry_run=True, max_images_per_vehicle=5))
    assert report.planned == [(vid, urls[:5])] and report.counts["urls_planned"] == 5
    assert metadata_of(conn, vid) == before_meta and images_of(conn, vid) == []
    assert files_under(store.root) == [] and len(server.requests) == before_requests


def test_rerun_is_a_noop(conn, server, fetcher, store) -> None:
    vid = add_vehicle(conn, [server.url("/img/200.jpg"), server.url("/status/404")], ORG_A)
    run(conn, ORG_A, fetcher, store)
    rows, meta, requests = images_of(conn, vid), metadata_of(conn, vid), len(server.requests)
    report = run(conn, ORG_A, fetcher, store)
    assert report.counts["vehicles_selected"] == 0 and sum(report.counts.values()) == 0
    assert images_of(conn, vid) == rows and metadata_of(conn, vid) == meta and len(server.requests) == requests


def test_a_run_for_one_organization_touches_only_its_vehicles(conn, server, fetcher, store) -> None:
    a = add_vehicle(conn, [server.url("/img/300.jpg")], ORG_A)
    b = add_vehicle(conn, [server.url("/img/301.jpg")], ORG_B)
    none = add_vehicle(conn, [server.url("/img/302.jpg")], None)
    assert dict(records.due_counts(conn)) == {ORG_A: 1, ORG_B: 1, NO_ORGANIZATION: 1}
    run(conn, ORG_B, fetcher, store)
    assert [len(images_of(conn, v)) for v in (a, b, none)] == [0, 1, 0]
    assert "images_backfilled" not in metadata_of(conn, a) and "images_backfilled" not in metadata_of(conn, none)
    run(conn, NO_ORGANIZATION, fetcher, store)
    assert [len(images_of(conn, v)) for v in (a, b, none)] == [0, 1, 1]
    assert dict(records.due_counts(conn)) == {ORG_A: 1}


def test_only_public_vehicles_with_urls_and_no_images_need_backfill(conn) -> None:
    due = add_vehicle(conn, ["http://127.0.0.1/a.jpg"], ORG_A)
    add_vehicle(conn, ["http://127.0.0.1/b.jpg"], ORG_A, public=False)
    add_vehicle(conn, None, ORG_A)
    add_vehicle(conn, [], ORG_A)
    add_vehicle(conn, ["http://127.0.0.1/c.jpg"], ORG_A, images_backfilled=True)
    has_images = add_vehicle(conn, ["http://127.0.0.1/d.jpg"], ORG_A)
    conn.execute("INSERT INTO vehicle_images (vehicle_id, source_url) VALUES (%s, 'older')", (has_images,))
    conn.execute("INSERT INTO vehicles (organization_id, origin_metadata) VALUES (%s, NULL)", (ORG_A,))
    assert [v.id for v in records.select_vehicles(conn, ORG_A, 100)] == [due]
    status = records.monitoring(conn)
    assert (status["needing_backfill"], status["due_now"], status["due_by_organization"]) == (1, 1, {ORG_A: 1})
    with pytest.raises(ValueError, match="uuid"):
        records.select_vehicles(conn, "not-an-org", 1)


def test_limit_and_batches(conn, server, fetcher, store) -> None:
    ids = [add_vehicle(conn, [server.url(f"/img/{400 + n}.jpg")], ORG_A) for n in range(5)]
    pauses: list[float] = []
    report = backfill.backfill_organization(
        conn,
        ORG_A,
        fetcher=fetcher,
        store=store,
        spec=DerivativeSpec(),
        options=BackfillOptions(limit=4, batch_size=2, pause_seconds=1.5),
        sleep=pauses.append,
    )
    assert report.counts["vehicles_backfilled"] == 4 and pauses == [1.5]  # two batches, one pause between
    assert sum(len(images_of(conn, v)) for v in ids) == 4 and len(records.select_vehicles(conn, ORG_A, 10)) == 1


def test_allocate_shares_the_limit_fairly() -> None:
    assert backfill.allocate([("a", 500), ("b", 3), ("c", 40)], 100) == [("a", 57), ("b", 3), ("c", 40)]
    assert backfill.allocate([("a", 5), ("b", 5)], 100) == [("a", 5), ("b", 5)]
    assert backfill.allocate([("a", 5), ("b", 5), ("c", 5)], 2) == [("a", 1), ("b", 1)]
    assert backfill.allocate([], 10) == []


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BackfillOptions(batch_size=0)


# --- migration over the older system's tables ----------------------------------------------------


def test_migration_adds_only_missing_columns_to_older_tables(pg_server: str) -> None:
    name = f"t_older_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
            c.execute(
                """CREATE TABLE vehicles (id uuid PRIMARY KEY, make text, organization_id uuid,
                                          is_public boolean NOT NULL DEFAULT false, origin_metadata jsonb);
                   CREATE TABLE vehicle_images (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                                                vehicle_id uuid REFERENCES vehicles (id), image_url text NOT NULL,
                                                is_primary boolean)"""
            )
            vid = str(uuid.uuid4())
            c.execute(
                "INSERT INTO vehicles VALUES (%s, 'Porsche', NULL, true, %s)", (vid, Jsonb({"image_urls": ["x"]}))
            )
            c.execute("INSERT INTO vehicle_images (vehicle_id, image_url) VALUES (%s, 'https://old/1.jpg')", (vid,))
        db.migrate(dsn)
        with psycopg.connect(dsn, row_factory=dict_row) as c:
            columns = {
                (r["table_name"], r["column_name"]): (r["data_type"], r["column_default"])
                for r in c.execute(
                    """SELECT table_name, column_name, data_type, column_default FROM information_schema.columns
                       WHERE table_name IN ('vehicles', 'vehicle_images')"""
                )
            }
            assert columns[("vehicles", "make")][0] == "text"  # kept
            assert columns[("vehicles", "is_public")][1] == "false"  # the older default, untouched
            assert columns[("vehicle_images", "is_primary")][0] == "boolean"
            assert {("vehicle_images", c) for c in ("source_url", "object_key", "content_hash", "bytes")} <= set(
                columns
            )
            assert c.execute("SELECT make FROM vehicles").fetchone()["make"] == "Porsche"
            assert c.execute("SELECT image_url FROM vehicle_images").fetchone()["image_url"] == "https://old/1.jpg"
        assert db.migrate(dsn) == []
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- through Dagster -----------------------------------------------------------------------------


def _resources(dsn: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "database": PostgresResource(dsn=dsn),
        "object_store": LocalObjectStore(root=str(tmp_path / "objects")),
        "image_fetch": ImageFetchResource(**FAST),
        "library": ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache")),
    }


def test_asset_materializes_one_organization_partition(conn, pg_dsn, server, tmp_path) -> None:
    a = add_vehicle(conn, [server.url("/img/500.jpg"), server.url("/status/404")], ORG_A)
    b = add_vehicle(conn, [server.url("/img/501.jpg")], ORG_B)
    # A current instance (not just an ephemeral object): definition loading looks it up.
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(VEHICLE_ORGANIZATIONS, [ORG_A])

        def run(dry_run: bool) -> dg.ExecuteInProcessResult:
            config = {"pause_seconds": 0, "dry_run": dry_run}
            return dg.materialize([vehicle_image_backfill], partition_key=ORG_A, instance=instance,
                                  resources=_resources(pg_dsn, tmp_path),
                                  run_config={"ops": {"vehicle_image_backfill": {"config": config}}})

        result = run(dry_run=True)
        meta = result.asset_materializations_for_node("vehicle_image_backfill")[0].metadata
        assert meta["dry_run"].value is True and meta["would_fetch"].value == {
            a: [server.url("/img/500.jpg"), server.url("/status/404")]
        }
        assert images_of(conn, a) == []

        result = run(dry_run=False)
        assert result.success
        meta = result.asset_materializations_for_node("vehicle_image_backfill")[0].metadata
        assert (meta["vehicles_backfilled"].value, meta["images_stored"].value, meta["urls_failed"].value) == (1, 1, 1)
        assert "http-error" in meta["failures"].value
        assert len(images_of(conn, a)) == 1 and images_of(conn, b) == []


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A persistent temporary instance: schedule contexts need an instance ref."""
    with dg.instance_for_test() as inst:
        yield inst


def test_schedule_requests_runs_for_due_organizations_and_skips_those_in_flight(
    conn, pg_dsn, tmp_path, monkeypatch, instance
) -> None:
    for n in range(3):
        add_vehicle(conn, [f"http://127.0.0.1/{n}.jpg"], ORG_A)
    add_vehicle(conn, ["http://127.0.0.1/b.jpg"], ORG_B)
    add_vehicle(conn, ["http://127.0.0.1/none.jpg"], None)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    add_vehicle(conn, ["http://127.0.0.1/wait.jpg"], str(uuid.uuid4()), images_backfill_next_attempt_at=later)
    defs = dg.Definitions(
        assets=[vehicle_image_backfill],
        jobs=[vehicle_backfill_job],
        schedules=[trickle_backfill_schedule],
        resources=_resources(pg_dsn, tmp_path),
    )

    def tick() -> dg.ScheduleExecutionData:
        with dg.build_schedule_context(
            instance=instance,
            resources={"database": PostgresResource(dsn=pg_dsn)},
            repository_def=defs.get_repository_def(),
        ) as context:
            return trickle_backfill_schedule.evaluate_tick(context)

    monkeypatch.setenv("TRICKLE_BACKFILL_LIMIT", "4")
    requests = {r.partition_key: r for r in tick().run_requests}
    assert {k: r.run_config["ops"]["vehicle_image_backfill"]["config"]["limit"] for k, r in requests.items()} == {
        ORG_A: 2,
        ORG_B: 1,
        NO_ORGANIZATION: 1,
    }
    assert set(instance.get_dynamic_partitions(VEHICLE_ORGANIZATIONS)) == {ORG_A, ORG_B, NO_ORGANIZATION}
    assert requests[ORG_A].tags["dagster/max_retries"] == "1" and requests[ORG_A].run_key == f"trickle:{ORG_A}"

    instance.add_run(
        dg.DagsterRun(
            job_name="vehicle_backfill_job",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": ORG_A},
        )
    )
    monkeypatch.setenv("TRICKLE_BACKFILL_LIMIT", "100")
    assert {r.partition_key for r in tick().run_requests} == {ORG_B, NO_ORGANIZATION}

    conn.execute("UPDATE vehicles SET is_public = false")
    data = tick()
    assert data.run_requests == [] and "no vehicles due" in data.skip_message


# --- the CLI -------------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(BIN / "assemblage"), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_backfill_vehicles_and_status_cli(assemblage_env, conn, server, capsys) -> None:
    env = {**assemblage_env, "FETCH_ALLOW_HOSTS": "127.0.0.1", "FETCH_READ_TIMEOUT": "1"}
    a = add_vehicle(conn, [server.url("/img/600.jpg"), server.url("/img/601.jpg"), server.url("/status/500")], ORG_A)
    b = add_vehicle(conn, [server.url("/img/602.jpg")], ORG_B)

    out = _cli(["backfill-vehicles", "--organization-id", ORG_A, "--dry-run", "--max-images", "2"], env)
    assert server.url("/img/601.jpg") in out and server.url("/status/500") not in out
    assert images_of(conn, a) == []

    out = _cli(["backfill-vehicles", "--limit", "10", "--pause", "0"], env)  # every organization
    assert "2/2 organization run(s) succeeded" in out and "images inserted 2, URLs failed 1" in out
    assert len(images_of(conn, a)) == 2 and len(images_of(conn, b)) == 1
    instance = dg.DagsterInstance.from_config(assemblage_env["DAGSTER_HOME"])
    assert set(instance.get_dynamic_partitions(VEHICLE_ORGANIZATIONS)) == {ORG_A, ORG_B}
    assert {r.job_name for r in instance.get_runs()} == {"vehicle_backfill_job"}

    status = json.loads(_cli(["status", "--json"], env))
    assert {"images", "status_counts", "failures", "vehicles"} <= set(status)
    v = status["vehicles"]
    assert (v["backfilled"], v["needing_backfill"], v["vehicle_images"]) == (2, 0, 3)
    assert [(f["url"], f["kind"]) for f in v["failed_urls"]] == [(server.url("/status/500"), "http-error")]
    print_status(status)  # the human-readable form of the same dict
    assert "vehicles needing image backfill: 0 (0 due now, 0 waiting to retry); backfilled: 2 (3 images)" in (
        capsys.readouterr().out
    )

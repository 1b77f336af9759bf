"""Dropbox as an image source (issue 11) through the official SDK against a loopback HTTPS
stand-in (trustme CA): cursor pagination, a 429 with Retry-After, a unicode path, a file
deleted between listing and download, a truncated body, an image shared with a local folder
(one image), refresh-token auth, and a rejected token failing the run without showing it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row
from support.dropbox_loopback import DropboxServer, DropboxStandIn

from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images import staging
from assemblage_assets.images.assets import derivatives, r2_objects, raw_files
from assemblage_assets.images.shards import shard_key
from assemblage_assets.images.sources import shard_refs
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource
from resources.image_source import from_env
from resources.object_store import LocalObjectStore

FOLDER = "Ferien Sommer ü"  # unicode first-level folder: a hashed shard key


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    make_photo(80, 60, seed).save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture
def dropbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stand_in = DropboxStandIn()
    with DropboxServer(stand_in, tmp_path / "ca.pem") as server:
        monkeypatch.setenv("DROPBOX_API_HOST", server.host)
        monkeypatch.setenv("DROPBOX_API_CONTENT_HOST", server.host)
        monkeypatch.setenv("DROPBOX_CA_CERTS", str(server.ca_pem))
        monkeypatch.setenv("DROPBOX_ACCESS_TOKEN", stand_in.token)
        monkeypatch.setenv("DROPBOX_PAGE_SIZE", "2")
        for name in ("DROPBOX_APP_KEY", "DROPBOX_REFRESH_TOKEN", "IMAGE_SOURCES"):
            monkeypatch.delenv(name, raising=False)
        yield stand_in


def _ingest(dsn: str, library: ImageLibraryResource, store, key: str) -> dg.ExecuteInProcessResult:
    resources = {"database": PostgresResource(dsn=dsn), "library": library, "object_store": store}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, [key])
        return dg.materialize([raw_files, derivatives, r2_objects], partition_key=key, instance=instance,
                              resources=resources, raise_on_error=False)


def _rows(dsn: str, sql: str, *params: object) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def _failure(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.event_specific_data.error.message


def test_dropbox_and_a_local_folder_side_by_side(dropbox: DropboxStandIn, pg_dsn: str, tmp_path: Path) -> None:
    shared = jpeg(1)
    local = tmp_path / "library"
    (local / "2024").mkdir(parents=True)
    (local / "2024" / "same.jpg").write_bytes(shared)
    dropbox.put(f"/Photos/{FOLDER}/same.jpg", shared)
    for i in range(2, 7):
        dropbox.put(f"/Photos/{FOLDER}/Tag {i}/Straße {i}.jpg", jpeg(i))
    dropbox.put(f"/Photos/{FOLDER}/gone.jpg", jpeg(20))
    dropbox.put(f"/Photos/{FOLDER}/cut.jpg", jpeg(21))
    dropbox.delete_on_download.add(f"/Photos/{FOLDER}/gone.jpg")
    dropbox.truncate.add(f"/Photos/{FOLDER}/cut.jpg")
    dropbox.rate_limit["files/list_folder/continue"] = 1  # one 429 with Retry-After: 1

    sources = f"{local},dropbox:/Photos"
    library = ImageLibraryResource(
        images_dir=str(local), derivative_cache_dir=str(tmp_path / "cache"), image_sources=sources,
        staging_dir=str(tmp_path / "staging"),
    )
    keys = sorted(ref.key for ref in shard_refs(from_env(sources)))
    dropbox_key = f"dropbox~{shard_key(FOLDER)}"
    assert keys == sorted(["library~2024", dropbox_key])
    store = LocalObjectStore(root=str(tmp_path / "objects"))

    assert _ingest(pg_dsn, library, store, "library~2024").success
    result = _ingest(pg_dsn, library, store, dropbox_key)
    assert result.success, _failure(result)
    meta = result.asset_materializations_for_node("raw_files")[0].metadata
    assert meta["seen"].value == 8 and meta["pending"].value == 6 and meta["failed"].value == 2
    # 8 entries (+ 5 folders) in pages of 2: many continue cursors, one of them answered 429 first
    assert dropbox.calls["files/list_folder/continue"] >= 6
    rows = {r["local_path"]: r for r in _rows(pg_dsn, "SELECT * FROM processing_log")}
    base = f"dropbox:/Photos/{FOLDER}"
    assert rows[f"{base}/gone.jpg"]["error_kind"] == "source-missing"
    assert rows[f"{base}/cut.jpg"]["error_kind"] == "truncated" and rows[f"{base}/cut.jpg"]["source_marker"] is None
    assert dropbox.calls["files/download"] == 6 + 1 + 4  # the truncated body was tried four times
    assert rows[f"{base}/Tag 2/Straße 2.jpg"]["status"] == "uploaded"
    # the same bytes in Dropbox and in the folder are one image
    assert rows[f"{base}/same.jpg"]["image_id"] == rows[str(local / "2024" / "same.jpg")]["image_id"]
    assert _rows(pg_dsn, "SELECT count(*) AS n FROM images")[0]["n"] == 6
    assert staging.is_empty(tmp_path / "staging")
    assert dropbox.token not in json.dumps([str(e) for e in result.all_events])

    # the truncation is gone: the next run fetches only that entry
    dropbox.truncate.clear()
    dropbox.calls.clear()
    again = _ingest(pg_dsn, library, store, dropbox_key)
    meta = again.asset_materializations_for_node("raw_files")[0].metadata
    assert meta["changed"].value == 1 and meta["pending"].value == 1  # cut.jpg now whole (gone.jpg is no longer listed)
    assert dropbox.calls["files/download"] == 1
    assert _rows(pg_dsn, "SELECT status FROM processing_log WHERE local_path = %s", f"{base}/cut.jpg")[0]["status"] == "uploaded"


def test_refresh_token_auth_and_a_rejected_token(
    dropbox: DropboxStandIn, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropbox.put("/Inbox/a/p.jpg", jpeg(3))
    library = ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                   image_sources="dropbox:/Inbox", staging_dir=str(tmp_path / "staging"))
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    monkeypatch.delenv("DROPBOX_ACCESS_TOKEN")
    monkeypatch.setenv("DROPBOX_APP_KEY", "app-key")
    monkeypatch.setenv("DROPBOX_REFRESH_TOKEN", dropbox.refresh_token)
    result = _ingest(pg_dsn, library, store, "a")
    assert result.success and dropbox.calls["oauth2/token"] == 1
    assert _rows(pg_dsn, "SELECT status FROM processing_log")[0]["status"] == "uploaded"

    monkeypatch.delenv("DROPBOX_APP_KEY")
    monkeypatch.setenv("DROPBOX_ACCESS_TOKEN", "sl.revoked-token-value-zz")
    bad = _ingest(pg_dsn, library, store, "a")
    message = _failure(bad)
    assert "DROPBOX_ACCESS_TOKEN" in message and "rejected" in message
    assert "sl.revoked-token-value-zz" not in json.dumps([str(e) for e in bad.all_events])
    assert not [e for e in bad.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]

    monkeypatch.setenv("DROPBOX_ACCESS_TOKEN", dropbox.token)
    nowhere = ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                   image_sources="dropbox:/Nowhere")  # (model_copy keeps Dagster's old config)
    missing = _ingest(pg_dsn, nowhere, store, "a")
    assert "does not exist" in _failure(missing)

"""``assemblage export``: the catalogue written to Parquet and CSV and read back (rows, columns,
tags, places, duplicates, vectors), the shard filter, and the CLI with real tiny-CLIP vectors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from support.embed_support import image_ids, ingest, query, tiny_clip, write_tree

from assemblage_assets.core import db
from assemblage_assets.embeddings import tags, vectors
from assemblage_assets.embeddings.export import export_catalogue, schema
from assemblage_assets.images.publish import publish_shard
from resources.object_store import LocalObjectStore

BIN = Path(sys.executable).parent
MODEL = "export-test-model"


@pytest.fixture
def catalogue(pg_dsn: str, tmp_path: Path) -> dict[str, str]:
    """Two shards ingested and published locally; vectors, tags, a place and a duplicate group."""
    images = write_tree(tmp_path / "images", {"alpha": ["orange", "blue", "green"], "beta": ["white", "orange"]})
    (images / "alpha" / "notes.txt").write_text("not an image")  # rejected: never exported
    cache = tmp_path / "cache"
    ingest(pg_dsn, images, cache)
    store = LocalObjectStore(root=str(tmp_path / "objects"), public_base_url="https://img.example.org")
    with db.connect(pg_dsn) as conn:
        for shard in ("alpha", "beta"):
            publish_shard(conn, shard, store=store, cache_dir=cache)
    ids = image_ids(pg_dsn)
    with db.connect(pg_dsn) as conn:
        rng = np.random.default_rng(7)
        embedded = sorted(ids.values())[:-1]  # one image has no vector: its cell must be null
        vectors.ensure_model(conn, MODEL, "local_clip", 16, defer=True)
        vectors.write_vectors(conn, MODEL, "local_clip", embedded, rng.standard_normal((len(embedded), 16)))
        tags.write_tags(conn, MODEL, {ids["orange-0.jpg"]: [("car", 0.4), ("street", 0.9)]})
        # test fixtures of other areas' tables: a place and a near-duplicate pair
        conn.execute("UPDATE images SET place_city = 'Lisbon', place_country = 'PT', latitude = 38.7, longitude = -9.1, "
                     "caption = 'an orange square' WHERE id = %s", (ids["orange-0.jpg"],))
        group = conn.execute("INSERT INTO duplicate_groups (representative_id) VALUES (%s) RETURNING id",
                             (ids["orange-0.jpg"],)).fetchone()["id"]
        for name, distance in (("orange-0.jpg", 0), ("blue-1.jpg", 6)):
            conn.execute("INSERT INTO duplicate_members (image_id, group_id, hash_distance) VALUES (%s, %s, %s)",
                         (ids[name], group, distance))
    return ids


def _stored_vector(dsn: str, image_id: str, model: str) -> np.ndarray | None:
    with db.connect(dsn) as conn:
        return vectors.stored_vector(conn, image_id, model)


def test_parquet_round_trip_with_vectors(pg_dsn: str, catalogue: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out" / "catalogue.parquet"
    lines: list[str] = []
    with db.connect(pg_dsn) as conn:
        report = export_catalogue(conn, out, "parquet", model=MODEL, chunk_rows=2, progress=lines.append)
    table = pq.read_table(out)
    assert table.schema.names == schema(True).names and report.rows == table.num_rows == len(set(catalogue.values()))
    assert lines and lines[-1].startswith(f"exported {report.rows:,}/{report.rows:,} images (100%)")
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # written in chunks of 2
    rows = {r["image_id"]: r for r in table.to_pylist()}
    orange = rows[catalogue["orange-0.jpg"]]
    assert orange["tags"] == ["street", "car"] and orange["place_city"] == "Lisbon" and orange["place_country"] == "PT"
    assert orange["caption"] == "an orange square" and orange["duplicate_representative"] == orange["image_id"]
    assert rows[catalogue["blue-1.jpg"]]["duplicate_group"] == orange["duplicate_group"] is not None
    assert orange["shard"] == "alpha" and orange["status"] == "uploaded" and orange["paths"] == 1
    assert orange["thumbnail_url"].startswith("https://img.example.org/thumbnail/")
    assert orange["width"] == 320 and orange["height"] == 240 and orange["format"] == "JPEG"
    assert orange["bytes"] == (Path(orange["local_path"])).stat().st_size
    missing = [r for r in rows.values() if r["vector"] is None]
    assert len(missing) == 1
    for image_id, row in rows.items():
        if row["vector"] is not None:
            assert np.array_equal(np.asarray(row["vector"], dtype=np.float32), _stored_vector(pg_dsn, image_id, MODEL))
    assert not list(out.parent.glob(".*partial*"))  # written under a temporary name, then renamed


def test_csv_round_trip_and_shard_filter(pg_dsn: str, catalogue: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "beta.csv"
    with db.connect(pg_dsn) as conn:
        report = export_catalogue(conn, out, "csv", shard="beta")
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    beta = {catalogue["white-0.jpg"], catalogue["orange-1.jpg"]}
    assert {r["image_id"] for r in rows} == beta and report.rows == 2
    assert list(rows[0]) == schema(False).names and "vector" not in rows[0]
    assert {r["shard"] for r in rows} == {"beta"} and all(r["iso"] == "" for r in rows)  # null, not "nan"

    with db.connect(pg_dsn) as conn:
        export_catalogue(conn, out, "csv", model=MODEL)
    with out.open(newline="") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    orange = rows[catalogue["orange-0.jpg"]]
    assert json.loads(orange["tags"]) == ["street", "car"]
    stored = _stored_vector(pg_dsn, orange["image_id"], MODEL)
    assert np.allclose(json.loads(orange["vector"]), stored, rtol=0, atol=1e-6)

    empty = tmp_path / "none.parquet"
    with db.connect(pg_dsn) as conn:
        assert export_catalogue(conn, empty, "parquet", shard="no-such-shard").rows == 0
    assert pq.read_table(empty).num_rows == 0 and pq.read_table(empty).schema.names == schema(False).names


def test_export_cli_writes_real_tiny_clip_vectors(assemblage_env: dict[str, str], tmp_path: Path) -> None:
    images = write_tree(Path(assemblage_env["IMAGES_DIR"]), {"gamma": ["orange", "blue"]})
    tiny = tiny_clip(tmp_path)
    env = {**os.environ, **assemblage_env, "EMBEDDING_PROVIDER": "local_clip", "CLIP_MODEL": str(tiny)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "assemblage"), *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    cli("ingest", "--images-dir", str(images))
    cli("embed")
    out = tmp_path / "gamma.parquet"
    done = cli("export", "--with-vectors", "--shard", "gamma", "--output", str(out))
    assert "exported 2/2 images (100%)" in done.stderr and "wrote 2 images" in done.stdout
    table = pq.read_table(out)
    model = query(assemblage_env["DATABASE_URL"], "SELECT DISTINCT model FROM image_embeddings")[0]["model"]
    for row in table.to_pylist():
        assert row["status"] == "indexed"
        assert np.array_equal(np.asarray(row["vector"], dtype=np.float32),
                              _stored_vector(assemblage_env["DATABASE_URL"], row["image_id"], model))
    done = cli("export", "--format", "csv", "--output", str(tmp_path / "all.csv"))
    assert "wrote 2 images" in done.stdout

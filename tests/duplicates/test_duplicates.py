"""Near-duplicates across shards ingested in separate runs: variants grouped, distinct photos of
similar scenes not, the second shard's run leaves the first's groups alone, the CLI's JSON, the
asset in Dagster, and skip mode (nothing published, nothing embedded for a skipped image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from support.embed_support import tiny_clip

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.duplicates.config import DuplicateSettings
from assemblage_assets.duplicates.listing import list_groups
from assemblage_assets.duplicates.stage import group_shard
from assemblage_assets.embeddings.candidates import count_candidates
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from resources.embedding import LocalClipEmbedding
from resources.object_store import LocalObjectStore

BIN = Path(sys.executable).parent
SIZE = (800, 600)


def _scene(seed: int) -> Image.Image:
    return make_photo(*SIZE, seed)


def _pans(seed: int) -> tuple[Image.Image, Image.Image]:
    """Two framings of one wide scene, panned by 30%: distinct photos that must not be grouped."""
    wide = make_photo(int(SIZE[0] * 1.6), SIZE[1], seed)
    step = int(SIZE[0] * 0.3)
    return wide.crop((0, 0, *SIZE)), wide.crop((step, 0, step + SIZE[0], SIZE[1]))


def _crop(img: Image.Image, share: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * share / 2), int(h * share / 2)
    return img.crop((dx, dy, w - dx, h - dy))


def _overlay(img: Image.Image) -> Image.Image:
    out = img.copy()
    ImageDraw.Draw(out).text((20, SIZE[1] - 40), "(c) 2024", fill=(255, 255, 255), font_size=20)
    return out


def _write_first(root: Path) -> None:
    a = root / "first"
    a.mkdir(parents=True)
    _scene(1).save(a / "beach.jpg", quality=92)
    _scene(2).save(a / "forest.jpg", quality=92)
    _crop(_scene(1), 0.04).save(a / "beach-cropped.jpg", quality=90)
    _pans(3)[0].save(a / "harbour-left.jpg", quality=90)


def _write_second(root: Path) -> None:
    b = root / "second"
    b.mkdir(parents=True)
    _scene(1).resize((400, 300), Image.Resampling.LANCZOS).save(b / "beach-small.png")
    _overlay(_scene(1)).save(b / "beach-caption.jpg", quality=90)
    _scene(2).save(b / "forest-q20.jpg", quality=20)
    ImageEnhance.Brightness(_scene(2)).enhance(1.15).save(b / "forest-bright.webp", quality=85)
    _pans(3)[1].save(b / "harbour-right.jpg", quality=90)
    _scene(4).save(b / "meadow.jpg", quality=90)


def _ingest(dsn: str, images: Path, cache: Path, shard: str) -> None:
    (entry,) = [s for s in discover_shards(images) if s.key == shard]
    with db.connect(dsn) as conn:
        scan_shard(conn, entry, max_pixels=120_000_000)
        derive_shard(conn, shard, cache_dir=cache, spec=DerivativeSpec(), workers=1)


def _groups_by_name(dsn: str, shard: str | None = None) -> list[list[str]]:
    with db.connect(dsn) as conn:
        return [[Path(i["path"]).name for i in g["images"]] for g in list_groups(conn, shard)]


def _rows(dsn: str, sql: str, *params: object) -> list[dict]:
    with db.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()


def test_variants_grouped_across_two_shard_runs_and_the_first_left_alone(pg_dsn: str, tmp_path: Path) -> None:
    images, cache, config = tmp_path / "images", tmp_path / "cache", DuplicateSettings()
    _write_first(images)
    _ingest(pg_dsn, images, cache, "first")
    with db.connect(pg_dsn) as conn:
        first = group_shard(conn, "first", config=config, model=None)
    assert first.counts["checked"] == 4 and first.counts["new_groups"] == 1
    assert _groups_by_name(pg_dsn) == [["beach.jpg", "beach-cropped.jpg"]]
    hashes = _rows(pg_dsn, "SELECT count(*) AS n FROM images WHERE phash IS NOT NULL AND dhash IS NOT NULL")
    assert hashes[0]["n"] == 4  # derive stored both hashes of every image
    before = {r["image_id"]: r["checked_at"] for r in _rows(pg_dsn, "SELECT image_id, checked_at FROM duplicate_index")}
    group_before = _rows(pg_dsn, "SELECT id, updated_at FROM duplicate_groups")
    assert _groups_by_name(pg_dsn, "second") == []  # --shard: only groups with a member there

    _write_second(images)
    _ingest(pg_dsn, images, cache, "second")
    with db.connect(pg_dsn) as conn:
        second = group_shard(conn, "second", config=config, model=None)
        again = group_shard(conn, "second", config=config, model=None)
    assert second.counts["checked"] == 6  # only the new shard's images were compared
    assert again.counts["checked"] == 0 and again.counts["grouped"] == 0  # a rerun does nothing
    after = {r["image_id"]: r["checked_at"] for r in _rows(pg_dsn, "SELECT image_id, checked_at FROM duplicate_index")}
    assert {k: after[k] for k in before} == before  # the first shard's images were not checked again

    groups = _groups_by_name(pg_dsn)
    assert len(groups) == 2
    beach, forest = sorted(groups)
    assert beach[0] == "beach.jpg"  # the representative: most pixels
    assert sorted(beach) == sorted(["beach.jpg", "beach-cropped.jpg", "beach-small.png", "beach-caption.jpg"])
    assert forest[0] == "forest.jpg"  # same pixels as forest-q20 and forest-bright: the earliest seen
    assert sorted(forest) == sorted(["forest.jpg", "forest-q20.jpg", "forest-bright.webp"])
    names = {n for g in groups for n in g}
    assert not names & {"harbour-left.jpg", "harbour-right.jpg", "meadow.jpg"}  # distinct photos stay apart
    # the first shard's group kept its id (the beach joined it), the forest group is new
    assert group_before[0]["id"] in {r["id"] for r in _rows(pg_dsn, "SELECT id FROM duplicate_groups")}
    assert _groups_by_name(pg_dsn, "first") == groups  # both groups have a member in the first shard


def test_a_bridging_image_merges_two_groups(pg_dsn: str, tmp_path: Path) -> None:
    """Two variants too far apart to group directly; a third image close to both merges them."""
    images, cache = tmp_path / "images", tmp_path / "cache"
    strict = DuplicateSettings(phash_distance=4, dhash_distance=64)
    base = _scene(7)
    (images / "a").mkdir(parents=True)
    base.save(images / "a" / "original.jpg", quality=92)
    _ingest(pg_dsn, images, cache, "a")
    with db.connect(pg_dsn) as conn:
        group_shard(conn, "a", config=strict, model=None)
        rows = conn.execute("SELECT phash FROM images").fetchall()
    assert len(rows) == 1
    (images / "b").mkdir()
    _crop(base, 0.05).save(images / "b" / "cropped.jpg", quality=90)
    _ingest(pg_dsn, images, cache, "b")
    with db.connect(pg_dsn) as conn:
        report = group_shard(conn, "b", config=DuplicateSettings(phash_distance=64, dhash_distance=64), model=None)
    assert report.counts["grouped"] == 1
    assert len(_groups_by_name(pg_dsn)) == 1
    members = _rows(pg_dsn, "SELECT hash_distance FROM duplicate_members ORDER BY hash_distance")
    assert members[0]["hash_distance"] == 0 and len(members) == 2


def test_cli_json_lists_every_group_representative_first(assemblage_env: dict[str, str], tmp_path: Path) -> None:
    dsn, images = assemblage_env["DATABASE_URL"], Path(assemblage_env["IMAGES_DIR"])
    cache = tmp_path / "cache"
    _write_first(images)
    _ingest(dsn, images, cache, "first")
    with db.connect(dsn) as conn:
        group_shard(conn, "first", config=DuplicateSettings(), model=None)
    env = {**os.environ, **assemblage_env}
    proc = subprocess.run([str(BIN / "assemblage"), "duplicates", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert isinstance(data, list) and len(data) == 1
    (group,) = data
    assert set(group) == {"group", "images"} and isinstance(group["group"], int)
    assert [Path(i["path"]).name for i in group["images"]] == ["beach.jpg", "beach-cropped.jpg"]
    assert all({"image_id", "path", "distance"} <= set(i) for i in group["images"])
    assert group["images"][0]["distance"] == 0 and group["images"][1]["distance"] > 0
    human = subprocess.run([str(BIN / "assemblage"), "duplicates", "--shard", "first"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "beach-cropped.jpg" in human.stdout and "1 group" in human.stdout
    none = subprocess.run([str(BIN / "assemblage"), "duplicates", "--shard", "nowhere", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert none.returncode == 0 and json.loads(none.stdout) == []


def test_skip_mode_publishes_and_embeds_no_near_duplicate(
    assemblage_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIP_NEAR_DUPLICATES", "1")  # what the embedding candidates read
    dsn, images, cache = assemblage_env["DATABASE_URL"], Path(assemblage_env["IMAGES_DIR"]), tmp_path / "cache"
    tiny = tiny_clip(tmp_path / "models")
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=4)
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    skip = DuplicateSettings(skip=True)
    _write_first(images)
    _ingest(dsn, images, cache, "first")
    with db.connect(dsn) as conn:
        first = group_shard(conn, "first", config=skip, model=provider.model_id)
        publish_shard(conn, "first", store=store, cache_dir=cache)
        embed_shard(conn, "first", provider, dsn=dsn, cache_dir=cache)
    # beach-cropped joined beach in the same run: beach is kept, the crop held back
    assert first.counts["skipped"] == 1
    _write_second(images)
    _ingest(dsn, images, cache, "second")
    with db.connect(dsn) as conn:
        second = group_shard(conn, "second", config=skip, model=provider.model_id)
        publish_shard(conn, "second", store=store, cache_dir=cache)
        embed_shard(conn, "second", provider, dsn=dsn, cache_dir=cache)
    assert second.counts["skipped"] == 4  # two beach and two forest variants of published images
    status = {Path(r["local_path"]).name: r for r in _rows(
        dsn, "SELECT p.local_path, p.status, p.error_message, i.uploaded_at, p.image_id::text AS id, "
        "EXISTS (SELECT 1 FROM image_embeddings e WHERE e.image_id = p.image_id) AS embedded "
        "FROM processing_log p JOIN images i ON i.id = p.image_id")}
    skipped = {"beach-cropped.jpg", "beach-small.png", "beach-caption.jpg", "forest-q20.jpg", "forest-bright.webp"}
    for name, row in status.items():
        if name in skipped:
            assert row["status"] == "duplicate" and "near-duplicate of image" in row["error_message"]
            assert row["uploaded_at"] is None and not row["embedded"]
        else:
            assert row["status"] == "indexed" and row["uploaded_at"] is not None and row["embedded"], name
    stored = {p.name for p in (tmp_path / "objects").rglob("*") if p.is_file()}
    for name in skipped:
        assert not any(status[name]["id"] in key for key in stored), name  # no original, thumbnail nor preview
    assert _groups_by_name(dsn)  # still recorded as groups
    # the same bytes as a held-back image under another path: held back there too, never embedded
    (images / "third").mkdir()
    (images / "third" / "copy.jpg").write_bytes((images / "first" / "beach-cropped.jpg").read_bytes())
    _ingest(dsn, images, cache, "third")
    with db.connect(dsn) as conn:
        third = group_shard(conn, "third", config=skip, model=provider.model_id)
        assert count_candidates(conn, None, provider.model_id) == 0
    assert third.counts["skipped"] == 1 and third.counts["checked"] == 0
    assert _rows(dsn, "SELECT status FROM processing_log WHERE shard = 'third'")[0]["status"] == "duplicate"
    # skip mode off: the held-back images go back to 'processed' and are published
    with db.connect(dsn) as conn:
        released = group_shard(conn, "second", config=DuplicateSettings(), model=provider.model_id)
        publish_shard(conn, "second", store=store, cache_dir=cache)
    assert released.counts["released"] == 4
    assert {status_row["status"] for status_row in _rows(
        dsn, "SELECT status FROM processing_log WHERE shard = 'second'")} == {"uploaded", "indexed"}


def test_asset_in_the_ingest_job_with_its_check(assemblage_env: dict[str, str], tmp_path: Path) -> None:
    from assemblage_assets import definitions
    from assemblage_assets.duplicates.assets import duplicates
    from assemblage_assets.images.assets import derivatives, raw_files
    from assemblage_assets.partitions import IMAGE_SHARDS
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    keys = definitions.defs.resolve_job_def("ingest_shard_job").asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in keys} == {"raw_files", "derivatives", "duplicates", "r2_objects"}
    images = Path(assemblage_env["IMAGES_DIR"])
    _write_first(images)
    resources = {
        "database": PostgresResource(dsn=assemblage_env["DATABASE_URL"]),
        "library": ImageLibraryResource(images_dir=str(images), derivative_cache_dir=str(tmp_path / "cache"), derive_workers=1),
        "object_store": LocalObjectStore(root=str(tmp_path / "objects")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, ["first"])
        result = dg.materialize([raw_files, derivatives, duplicates], partition_key="first", instance=instance,
                                resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("duplicates")[0].metadata
    assert meta["checked"].value == 4 and meta["shard_duplicates"].value == 1
    assert "beach-cropped.jpg" in meta["groups"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "duplicate_count" and check.passed and check.metadata["duplicates"].value == 1


def test_clip_turns_down_hash_candidates_and_later_reconfirms(pg_dsn: str, tmp_path: Path) -> None:
    """Vectors of a random tiny CLIP mean nothing, so the thresholds are the extremes: 0 turns
    down every pair with any distance, 2 (the largest cosine distance) accepts every pair."""
    images, cache = tmp_path / "images", tmp_path / "cache"
    provider = LocalClipEmbedding(clip_model=str(tiny_clip(tmp_path / "models")), batch_size=4)
    _write_first(images)
    _ingest(pg_dsn, images, cache, "first")
    with db.connect(pg_dsn) as conn:
        embed_shard(conn, "first", provider, dsn=pg_dsn, cache_dir=cache)  # vectors before the check
        strict = group_shard(conn, "first", config=DuplicateSettings(clip_distance=0.0), model=provider.model_id)
    assert strict.counts["clip_rejected"] == 1 and strict.counts["grouped"] == 0  # the crop, turned down
    assert _groups_by_name(pg_dsn) == []

    _write_second(images)
    _ingest(pg_dsn, images, cache, "second")
    with db.connect(pg_dsn) as conn:
        hashed = group_shard(conn, "second", config=DuplicateSettings(clip_distance=2.0), model=provider.model_id)
    assert hashed.counts["grouped"] == 4  # no vectors yet: on the hashes alone
    second_members = _rows(pg_dsn, "SELECT m.clip_distance FROM duplicate_members m JOIN processing_log p "
                           "ON p.image_id = m.image_id WHERE p.shard = 'second'")
    assert len(second_members) == 4 and all(r["clip_distance"] is None for r in second_members)
    with db.connect(pg_dsn) as conn:
        embed_shard(conn, "second", provider, dsn=pg_dsn, cache_dir=cache)
        later = group_shard(conn, "second", config=DuplicateSettings(clip_distance=0.0), model=provider.model_id)
    assert later.counts["checked"] == 0 and later.counts["clip_detached"] >= 1
    left = _rows(pg_dsn, "SELECT m.clip_distance FROM duplicate_members m JOIN duplicate_groups g ON g.id = m.group_id "
                 "JOIN processing_log p ON p.image_id = m.image_id "
                 "WHERE m.image_id <> g.representative_id AND p.shard = 'second'")
    assert all(r["clip_distance"] is not None and r["clip_distance"] <= 0.0 for r in left)  # the rest detached
    assert all(len(g) >= 2 for g in _groups_by_name(pg_dsn))  # no group of one is left behind


def test_assemblage_ingest_keeps_groups_current_and_skips_in_separate_runs(
    assemblage_env: dict[str, str], tmp_path: Path
) -> None:
    """The operator's path: `assemblage ingest` per shard, in two runs, with skip mode on."""
    images = Path(assemblage_env["IMAGES_DIR"])
    objects = tmp_path / "objects"
    env = {**os.environ, **assemblage_env, "SKIP_NEAR_DUPLICATES": "1", "OBJECT_STORE_DIR": str(objects),
           "DERIVE_WORKERS": "1"}

    def run(*args: str) -> str:
        proc = subprocess.run([str(BIN / "assemblage"), *args], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    _write_first(images)
    run("ingest", "--images-dir", str(images), "--shard", "first")
    _write_second(images)
    run("ingest", "--images-dir", str(images), "--shard", "second")
    groups = json.loads(run("duplicates", "--json"))
    named = sorted(sorted(Path(i["path"]).name for i in g["images"]) for g in groups)
    assert named == [sorted(["beach.jpg", "beach-cropped.jpg", "beach-small.png", "beach-caption.jpg"]),
                     sorted(["forest.jpg", "forest-q20.jpg", "forest-bright.webp"])]
    rows = {Path(r["local_path"]).name: r for r in _rows(
        assemblage_env["DATABASE_URL"],
        "SELECT p.local_path, p.status, p.image_id::text AS id FROM processing_log p")}
    held = {n for n, r in rows.items() if r["status"] == "duplicate"}
    assert held == {"beach-cropped.jpg", "beach-small.png", "beach-caption.jpg", "forest-q20.jpg", "forest-bright.webp"}
    stored = [p.name for p in objects.rglob("*") if p.is_file()]
    assert all(not any(rows[n]["id"] in key for key in stored) for n in held)  # nothing of theirs published
    assert all(sum(rows[n]["id"] in key for key in stored) == 3 for n in rows if n not in held)  # the rest: 3 objects

"""CLIP backends with the tiny CLIP: ONNX export, int8 quantization, verification against torch
fp32 (and a forced failure with its figure), the on-disk cache, ``auto``, the stage recording
the backend on each row, ``--reembed``, and migration 0011's rewrite of stored vectors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support.embed_support import image_ids, ingest, query, tiny_clip, write_tree

from assemblage_assets import cli
from assemblage_assets.core import db
from assemblage_assets.embeddings import reembed, vectors
from assemblage_assets.embeddings.embed import embed_shard
from resources.embedding import LocalClipEmbedding, clip_auto, clip_encoder, clip_export
from resources.embedding.clip_backends import MIN_COSINE, Backend, TorchRunner, candidates, min_cosine
from resources.embedding.clip_encoder import ClipEncoder, load_clip
from resources.embedding.clip_export import BackendVerificationError, ensure_onnx, sample_features
from resources.embedding.types import ProviderConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ASSEMBLAGE_HOME for the module: the ONNX builds are made once and shared."""
    path = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASSEMBLAGE_HOME", str(path))
        yield path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts real exports and quantizations (the functions still run)."""
    counted = {"export": 0, "quantize": 0}
    export, quantize = clip_export.export_towers, clip_export.quantize_towers

    def counting_export(*a, **kw):
        counted["export"] += 1
        return export(*a, **kw)

    def counting_quantize(*a, **kw):
        counted["quantize"] += 1
        return quantize(*a, **kw)

    monkeypatch.setattr(clip_export, "export_towers", counting_export)
    monkeypatch.setattr(clip_export, "quantize_towers", counting_quantize)
    monkeypatch.setattr(clip_encoder, "_RUNNERS", {})  # a new process, as far as runners go
    return counted


def _build_dir(home: Path, tiny: Path, precision: str) -> Path:
    return home / "models" / "clip-backends" / clip_export.model_key(str(tiny)) / f"onnx-{precision}"


def _reference(tiny: Path, features: dict) -> np.ndarray:
    return TorchRunner(load_clip(str(tiny)))(features)


def test_onnx_fp32_exports_both_towers_verified_and_close_to_torch(home: Path, tiny: Path, calls: dict) -> None:
    encoder = ClipEncoder.load(str(tiny), backend="onnx", precision="fp32")
    assert encoder.backend_label == "onnx-fp32"
    build = _build_dir(home, tiny, "fp32")
    assert {p.name for p in build.iterdir()} == {"vision.onnx", "text.onnx", "build.json"}
    info = json.loads((build / "build.json").read_text())
    assert info["image_cosine"] >= 0.999 and info["text_cosine"] >= 0.999 and info["precision"] == "fp32"
    images, texts = sample_features(encoder.model, encoder.min_side)
    assert min_cosine(encoder.forward(images), _reference(tiny, images)) > 0.99999
    assert min_cosine(encoder.forward(texts), _reference(tiny, texts)) > 0.99999
    # search text goes through the same runner
    text = encoder.encode_texts(["an orange car"])
    assert text.shape == (1, encoder.dim) and abs(float(np.linalg.norm(text)) - 1) < 1e-5
    assert not list(build.parent.glob(".build-*"))  # no temporary build left behind


def test_onnx_int8_is_quantized_from_the_fp32_build_and_verified(home: Path, tiny: Path, calls: dict) -> None:
    encoder = ClipEncoder.load(str(tiny), backend="onnx", precision="int8")
    assert encoder.backend_label == "onnx-int8"
    build = _build_dir(home, tiny, "int8")
    ops = {node.op_type for node in onnx.load(str(build / "vision.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}  # really int8
    fp32_ops = {node.op_type for node in onnx.load(str(_build_dir(home, tiny, "fp32") / "vision.onnx")).graph.node}
    assert not fp32_ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    info = clip_export.build_info(build)
    assert min(info["image_cosine"], info["text_cosine"]) >= 0.999
    images, _ = sample_features(encoder.model, encoder.min_side)
    cosine = min_cosine(encoder.forward(images), _reference(tiny, images))
    assert 0.999 <= cosine < 0.99999  # close to fp32, but not the same numbers


def test_second_load_reuses_the_cached_builds(home: Path, tiny: Path, calls: dict) -> None:
    ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32)  # built by now (or here, once)
    calls["export"] = calls["quantize"] = 0
    before = {p: p.stat().st_mtime_ns for p in _build_dir(home, tiny, "int8").iterdir()}
    encoder = ClipEncoder.load(str(tiny), backend="onnx", precision="int8")
    assert encoder.backend_label == "onnx-int8"
    assert calls == {"export": 0, "quantize": 0}
    assert {p: p.stat().st_mtime_ns for p in _build_dir(home, tiny, "int8").iterdir()} == before


def test_a_failing_verification_reports_the_figure_and_caches_nothing(home: Path, tiny: Path, calls: dict,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSEMBLAGE_HOME", str(home / "strict"))
    strict = 0.99999  # fp32 export passes (cosine 1.0); dynamic int8 cannot
    with pytest.raises(BackendVerificationError, match=r"onnx-int8 .* worst cosine 0\.99\d+ .*< 0\.99999") as failed:
        ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32, threshold=strict)
    assert "images 0.99" in str(failed.value) and "texts 0.99" in str(failed.value)
    key = home / "strict" / "models" / "clip-backends" / clip_export.model_key(str(tiny))
    assert (key / "onnx-fp32" / "build.json").is_file()  # the fp32 build it quantized passed and is kept
    assert not (key / "onnx-int8").exists() and not list(key.glob(".build-*"))
    assert calls == {"export": 1, "quantize": 1}


def test_int8_keeps_the_fp32_text_tower_when_only_texts_drift(home: Path, tiny: Path, calls: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    build = ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32)
    kept = clip_export.build_info(build)
    between = MIN_COSINE
    if kept["text_precision"] == "int8":  # the default threshold kept int8 texts: raise it between the towers
        if kept["image_cosine"] <= kept["text_cosine"]:
            pytest.skip("the tiny model's int8 texts are not the weaker tower here")
        between = (kept["image_cosine"] + kept["text_cosine"]) / 2  # images pass, int8 texts do not
        monkeypatch.setenv("ASSEMBLAGE_HOME", str(home / "between"))
        build = ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32, threshold=between)
        kept = clip_export.build_info(build)
    assert kept["text_precision"] == "fp32" and kept["text_cosine_int8"] < between <= kept["text_cosine"]
    assert (build / "text.onnx").read_bytes() == (build.parent / "onnx-fp32" / "text.onnx").read_bytes()
    ops = {n.op_type for n in onnx.load(str(build / "vision.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"} and "ConvInteger" not in ops  # the patch conv stays fp32


def test_an_int8_build_of_an_older_recipe_is_rebuilt(home: Path, tiny: Path, calls: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSEMBLAGE_HOME", str(home / "recipe"))
    build = ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32)
    assert calls == {"export": 1, "quantize": 1}
    info = clip_export.build_info(build)
    (build / "build.json").write_text(json.dumps({**info, "recipe": "dynamic-int8-all-ops-v1"}))
    again = ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32)
    assert again == build and calls == {"export": 1, "quantize": 2}  # fp32 export reused, int8 redone
    assert clip_export.build_info(again)["recipe"] == clip_export.QUANT_RECIPE
    assert ensure_onnx(load_clip(str(tiny)), str(tiny), "int8", 32) == build and calls["quantize"] == 2


def test_torch_bf16_autocast_runs_and_stays_close(tiny: Path) -> None:
    model = load_clip(str(tiny))
    images, texts = sample_features(model, 32)
    bf16 = TorchRunner(model, "bf16")
    assert bf16.backend.label == "torch-bf16"
    assert min_cosine(bf16(images), TorchRunner(model)(images)) > 0.99
    assert min_cosine(bf16(texts), TorchRunner(model)(texts)) > 0.99


def test_candidates_follow_the_preferences() -> None:
    assert candidates("cpu", "torch", "fp32") == [Backend("torch", "fp32")]
    assert candidates("cpu", "onnx", "auto") == [Backend("onnx", "fp32"), Backend("onnx", "int8")]
    assert candidates("cuda:0", "auto", "auto") == [Backend("torch", "fp32"), Backend("torch", "fp16")]
    assert Backend("torch", "bf16") in candidates("cpu", "torch", "bf16")  # asked for: offered anyway
    with pytest.raises(ProviderConfigError, match="does not run CLIP_PRECISION=int8"):
        candidates("cpu", "torch", "int8")
    with pytest.raises(ProviderConfigError, match="CLIP_BACKEND must be"):
        candidates("cpu", "tensorrt", "auto")


def test_auto_measures_once_picks_a_close_fast_backend_and_caches_the_choice(
    home: Path, tiny: Path, calls: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = ClipEncoder.load(str(tiny), backend="auto", precision="auto")
    detail = encoder.backend_detail
    measured = {r["backend"]: r for r in detail["measured"]}
    assert {"torch-fp32", "onnx-fp32", "onnx-int8"} <= set(measured)
    usable = [r for r in measured.values() if r.get("cosine", 0) >= 0.999]
    assert detail["choice"] == encoder.backend_label == max(usable, key=lambda r: r["images_per_s"])["backend"]
    cached = list((home / "models" / "clip-backends" / clip_export.model_key(str(tiny))).glob("auto-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["choice"] == detail["choice"]

    def no_measuring(*a, **kw):
        raise AssertionError("measured again")

    monkeypatch.setattr(clip_auto, "measure", no_measuring)
    monkeypatch.setattr(clip_encoder, "_RUNNERS", {})
    assert ClipEncoder.load(str(tiny), backend="auto", precision="auto").backend_label == detail["choice"]


# --------------------------------------------------------------------------- stage, rows, --reembed


@pytest.fixture
def tree(tmp_path: Path, pg_dsn: str) -> tuple[Path, Path]:
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue", "orange", "green"]})
    cache = tmp_path / "cache"
    assert ingest(pg_dsn, images, cache) == ["cars"]
    return images, cache


def _vectors(dsn: str) -> dict[str, tuple[str, np.ndarray]]:
    with db.connect(dsn) as conn:
        rows = conn.execute("SELECT image_id::text AS id, backend FROM image_embeddings").fetchall()
        return {r["id"]: (r["backend"], vectors.stored_vector(conn, r["id"], "tiny-clip")) for r in rows}


def test_stage_records_the_backend_and_reembed_switches_rows(home: Path, tiny: Path, pg_dsn: str,
                                                              tree: tuple[Path, Path]) -> None:
    _, cache = tree
    int8 = LocalClipEmbedding(clip_model=str(tiny), batch_size=2, clip_backend="onnx", clip_precision="int8")
    with db.connect(pg_dsn) as conn:
        report = embed_shard(conn, "cars", int8, dsn=pg_dsn, cache_dir=cache, run_id="r1")
    assert report.counts["embedded"] == 4 and report.backend == "onnx-int8"
    before = _vectors(pg_dsn)
    assert {b for b, _ in before.values()} == {"onnx-int8"} and set(before) == set(image_ids(pg_dsn).values())
    model = query(pg_dsn, "SELECT backend, backend_detail FROM embedding_models WHERE model = 'tiny-clip'")[0]
    assert model["backend"] == "onnx-int8" and model["backend_detail"]["build"]["image_cosine"] >= 0.999

    fp32 = LocalClipEmbedding(clip_model=str(tiny), batch_size=2)  # torch fp32
    with db.connect(pg_dsn) as conn:
        assert reembed.count_stale(conn, "tiny-clip", "torch-fp32") == 4
        first = reembed.reembed(conn, fp32, cache, limit=3)  # stopped part-way: a mixed catalogue
        assert (first.stale, first.redone, first.failed) == (4, 3, 0)
        assert {(b["backend"], b["vectors"]) for b in vectors.backend_counts(conn)} == {("torch-fp32", 3), ("onnx-int8", 1)}
        rest = reembed.reembed(conn, fp32, cache)  # resumes: only the row still on int8
        assert (rest.stale, rest.redone) == (1, 1)
        assert reembed.reembed(conn, fp32, cache).redone == 0  # nothing left: idempotent
    after = _vectors(pg_dsn)
    assert {b for b, _ in after.values()} == {"torch-fp32"} and len(after) == 4
    for image_id, (_, vector) in after.items():
        old = before[image_id][1]
        assert not np.array_equal(vector, old)  # recomputed, not relabelled
        # same space (the tiny random model's int8 sits near the 0.999 line; real photos ~0.998)
        assert float(vector @ old) >= 0.99
    assert query(pg_dsn, "SELECT backend FROM embedding_models WHERE model = 'tiny-clip'")[0]["backend"] == "torch-fp32"


def test_reembed_through_the_cli(home: Path, tiny: Path, pg_dsn: str, assemblage_env: dict[str, str],
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_tree(Path(assemblage_env["IMAGES_DIR"]), {"cars": ["orange", "blue"]})
    ingest(pg_dsn, images, Path(assemblage_env["ASSEMBLAGE_HOME"]) / "derivatives")
    monkeypatch.setenv("CLIP_MODEL", str(tiny))
    assert cli.main(["embed"]) == 0  # torch fp32 (conftest's CLIP_BACKEND/CLIP_PRECISION)
    monkeypatch.setenv("ASSEMBLAGE_HOME", assemblage_env["ASSEMBLAGE_HOME"])
    shutil.copytree(home / "models", Path(assemblage_env["ASSEMBLAGE_HOME"]) / "models", dirs_exist_ok=True)
    monkeypatch.setenv("CLIP_BACKEND", "onnx")
    monkeypatch.setenv("CLIP_PRECISION", "fp32")
    capsys.readouterr()
    assert cli.main(["embed", "--reembed", "--estimate"]) == 0
    assert "2 vector(s) of tiny-clip were computed by another backend than onnx-fp32" in capsys.readouterr().out
    assert cli.main(["embed", "--reembed"]) == 0
    assert "2 vector(s) now onnx-fp32, 0 failed" in capsys.readouterr().out
    assert {r["backend"] for r in query(pg_dsn, "SELECT backend FROM image_embeddings")} == {"onnx-fp32"}
    assert cli.main(["status"]) == 0
    assert "backends: onnx-fp32 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- migration 0011


def test_migration_0011_rewrites_stored_vectors_inline_and_labels_them(pg_server: str, tmp_path: Path) -> None:
    name = "t_migration_0011"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(pg_server, dbname=name)
    before = tmp_path / "sql"
    before.mkdir()
    for f in sorted(db.SQL_DIR.glob("*.sql")):
        if f.name < "0011":
            shutil.copy(f, before / f.name)
    db.migrate(dsn, before)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6, 768)).astype(np.float32)
    with db.connect(dsn) as conn:
        ids = [str(r["id"]) for r in conn.execute(
            "INSERT INTO images (id, content_hash, bytes, width, height, format, original_ext, original_key) "
            "SELECT gen_random_uuid(), 'h' || g, 1, 1, 1, 'JPEG', 'jpg', 'k' || g FROM generate_series(1, 6) g RETURNING id").fetchall()]
        conn.commit()
        vectors.ensure_model(conn, "m768", "local_clip", 768)
        with conn.cursor() as cur, cur.copy(
                "COPY image_embeddings (image_id, model, provider, dim, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(vectors.copy_payload(ids, vecs, model="m768", provider="local_clip"))
        conn.commit()
        toast = "SELECT pg_total_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'image_embeddings'"
        assert conn.execute(toast).fetchone()["pg_total_relation_size"] > 6 * 3000  # out of line before
    db.migrate(dsn)
    with db.connect(dsn) as conn:
        storage = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'image_embeddings'::regclass "
                               "AND attname = 'embedding'").fetchone()["attstorage"]
        assert storage == "m"
        assert conn.execute(toast).fetchone()["pg_total_relation_size"] <= 8192 * 2  # empty toast relation
        rows = conn.execute("SELECT image_id::text AS id, backend FROM image_embeddings").fetchall()
        assert {r["backend"] for r in rows} == {"torch-fp32"}
        for i, image_id in enumerate(ids):
            np.testing.assert_array_equal(vectors.stored_vector(conn, image_id, "m768"), vecs[i])  # bit for bit
        options = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'image_embeddings'").fetchone()
        assert "toast_tuple_target=8160" in options["reloptions"]
        # a vector larger than a page (text-embedding-3-large) still fits: MAIN moves it out of line
        big_id = ids[0]
        big = rng.standard_normal((1, 3072)).astype(np.float32)
        vectors.write_vectors(conn, "m3072", "openai", [big_id], big)
        np.testing.assert_array_equal(vectors.stored_vector(conn, big_id, "m3072"), big[0])
        # the model's HNSW index survived the rewrite
        index = vectors.index_name("m768")
        assert conn.execute("SELECT to_regclass(%s) IS NOT NULL AS ok", (index,)).fetchone()["ok"]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

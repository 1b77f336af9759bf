"""Partitions at scale: 5,000 shard partitions on Dagster's SQLite and Postgres instance storage.

A tree of 5,000 first-level folders (``--shards``), one small photo each, cached under
``--work`` (default /tmp/assemblage-bench/partitions). Per instance storage (``sqlite``: the
default DAGSTER_HOME storage; ``postgres``: dagster-postgres on a database of the embedded
server), each in a fresh process with a fresh DAGSTER_HOME and fresh storage:

    register        ``shard_sensor.register_shards`` with 5,000 new folders (adds of 1,000 keys)
    sensor path     ``image_shards_sensor`` ticks (``build_sensor_context`` + the sensor) on a
                    second fresh instance until every folder is a partition, applying each tick's
                    ``AddDynamicPartitionsRequest`` as the daemon does (100 keys per tick); the
                    ticks' run requests are counted, not launched
    steady tick     ``image_shards_sensor`` with 5,000 partitions known and nothing new
    list keys       ``instance.get_dynamic_partitions`` and the partitions definition's keys
    missing tick    ``missing_embeddings_sensor`` with 5,000 partitions known and a catalogue of
                    5,000 shards (real ``scan_shard`` rows, marked uploaded, no vectors): the
                    first (full-scan) tick and the next (incremental, from its cursor) tick
    code location   in a new interpreter: import ``assemblage_assets.definitions``,
                    ``defs.get_repository_def()``, ``Definitions.validate_loadable``; wall time
                    of ``dagster definitions validate`` and of ``dagster sensor preview`` for both
                    sensors against the instance with 5,000 partitions

Measurements repeat ``--repeat`` times where repeating is possible (steady state); the best
counts. Writes JSON to WORK/partitions_scale-<shards>.json. Only 127.0.0.1 / unix sockets.

    .venv/bin/python benchmarks/partitions_scale.py [--shards 5000] [--storage sqlite,postgres] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path(os.environ.get("ASSEMBLAGE_BENCH_DIR") or "/tmp/assemblage-bench") / "partitions"
CLI_PROBE = """
import time
t0 = time.perf_counter()
import dagster as dg
from assemblage_assets.definitions import defs
t1 = time.perf_counter()
repo = defs.get_repository_def()
t2 = time.perf_counter()
dg.Definitions.validate_loadable(defs)
t3 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1} {t3 - t2} {len(list(repo.asset_graph.get_all_asset_keys()))}")
"""


def ensure_tree(root: Path, shards: int) -> None:
    """``shards`` folders of one 320x240 photo each, generated once."""
    from assemblage_assets.dev.sample_data import make_photo

    started = time.perf_counter()
    made = 0
    for i in range(shards):
        folder = root / f"folder-{i:05d}"
        photo = folder / "IMG_0001.JPG"
        if photo.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        make_photo(320, 240, i).save(photo, "JPEG", quality=85)
        made += 1
    if made:
        print(f"generated {made} folders in {time.perf_counter() - started:.0f} s (not measured)", flush=True)


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _dagster_home(path: Path, storage_url: str | None) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    config = "telemetry:\n  enabled: false\n"
    if storage_url:
        config += f"storage:\n  postgres:\n    postgres_url: \"{storage_url}\"\n"
    (path / "dagster.yaml").write_text(config)
    return path


def child(storage_urls: list[str], work: Path, repeat: int) -> dict:
    """Every in-process measurement for one storage kind; the environment comes from the parent."""
    t0 = time.perf_counter()
    import dagster as dg

    from assemblage_assets.definitions import defs  # noqa: F401 - timed: the code location's import
    imported = time.perf_counter() - t0
    from assemblage_assets.embeddings.sensors import missing_embeddings_sensor
    from assemblage_assets.images.sensors import image_shards_sensor, register_shards, unregistered_shards
    from assemblage_assets.partitions import IMAGE_SHARDS, image_shards_partitions_def
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    tree = Path(os.environ["IMAGES_DIR"])
    library = ImageLibraryResource.from_env()
    out: dict = {"import_definitions_seconds": round(imported, 3)}

    # register_shards on a fresh instance
    home_a = _dagster_home(work / "home-a", storage_urls[0])
    instance = dg.DagsterInstance.from_config(str(home_a))
    seconds, added = _timed(lambda: register_shards(instance, tree))
    out["register_seconds"] = round(seconds, 3)
    out["registered"] = len(added)
    out["discover_seconds"] = round(_timed(lambda: unregistered_shards(instance, tree), repeat)[0], 3)

    # the sensor's own path on a second fresh instance
    home_b = _dagster_home(work / "home-b", storage_urls[1])
    instance_b = dg.DagsterInstance.from_config(str(home_b))
    ticks, requested, tick_times, apply_times = 0, 0, [], []
    while True:
        context = dg.build_sensor_context(instance=instance_b, resources={"library": library})
        t0 = time.perf_counter()
        result = image_shards_sensor(context)
        tick_times.append(time.perf_counter() - t0)
        if not isinstance(result, dg.SensorResult):
            break
        ticks += 1
        requested += len(result.run_requests or [])
        t0 = time.perf_counter()
        for request in result.dynamic_partitions_requests or []:
            instance_b.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        apply_times.append(time.perf_counter() - t0)
    known_b = len(instance_b.get_dynamic_partitions(IMAGE_SHARDS))
    out["sensor_path"] = {
        "ticks": ticks, "run_requests": requested, "partitions": known_b,
        "evaluate_seconds_total": round(sum(tick_times), 2), "apply_seconds_total": round(sum(apply_times), 2),
        "first_tick_seconds": round(tick_times[0], 3), "last_tick_seconds": round(tick_times[-1], 3),
    }
    instance_b.dispose()

    # steady state with every shard known
    def steady() -> object:
        return image_shards_sensor(dg.build_sensor_context(instance=instance, resources={"library": library}))

    seconds, result = _timed(steady, repeat)
    assert isinstance(result, dg.SkipReason), result
    out["steady_tick_seconds"] = round(seconds, 3)
    out["get_dynamic_partitions_seconds"] = round(
        _timed(lambda: instance.get_dynamic_partitions(IMAGE_SHARDS), repeat)[0], 4)
    out["partition_keys_seconds"] = round(
        _timed(lambda: image_shards_partitions_def.get_partition_keys(dynamic_partitions_store=instance), repeat)[0], 4)

    # missing_embeddings_sensor against a catalogue of every shard
    database = PostgresResource(dsn=os.environ["DATABASE_URL"])

    def missing_tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"database": database})
        return missing_embeddings_sensor(context)

    full_s, full = _timed(lambda: missing_tick(None), repeat)
    incr_s, incr = _timed(lambda: missing_tick(full.cursor), repeat)
    out["missing_embeddings"] = {
        "full_tick_seconds": round(full_s, 3), "full_tick_requests": len(full.run_requests or []),
        "incremental_tick_seconds": round(incr_s, 3), "incremental_tick_requests": len(incr.run_requests or []),
        "cursor_bytes": len(full.cursor or ""),
    }
    instance.dispose()
    return out


def _cli(env: dict[str, str], repeat: int) -> dict:
    """Code-location loading and the CLI in new interpreters (the cost every process pays)."""
    bin_dir = Path(sys.executable).parent

    def run(cmd: list[str]) -> tuple[float, str]:
        best, text = float("inf"), ""
        for _ in range(repeat):
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
            best = min(best, time.perf_counter() - t0)
            text = done.stdout
        return best, text

    probe_wall, text = run([sys.executable, "-c", CLI_PROBE])
    imp, repo, validate, assets = text.split()
    module = ["-m", "assemblage_assets.definitions"]
    validate_wall, _ = run([str(bin_dir / "dagster"), "definitions", "validate", *module])
    preview_shards, _ = run([str(bin_dir / "dagster"), "sensor", "preview", "image_shards_sensor", *module])
    preview_missing, _ = run([str(bin_dir / "dagster"), "sensor", "preview", "missing_embeddings_sensor", *module])
    return {
        "python_import_definitions_seconds": round(float(imp), 3),
        "get_repository_def_seconds": round(float(repo), 3),
        "validate_loadable_seconds": round(float(validate), 3),
        "assets": int(assets),
        "python_probe_wall_seconds": round(probe_wall, 3),
        "dagster_definitions_validate_seconds": round(validate_wall, 3),
        "dagster_sensor_preview_image_shards_seconds": round(preview_shards, 3),
        "dagster_sensor_preview_missing_embeddings_seconds": round(preview_missing, 3),
    }


def _catalogue(server_dsn: str, tree: Path) -> str:
    """A catalogue database with every shard scanned for real, then marked uploaded (no vectors)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from assemblage_assets.core import db
    from assemblage_assets.images.scan import scan_shard
    from assemblage_assets.images.shards import discover_shards

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "parts_catalogue" WITH (FORCE)')
        conn.execute('CREATE DATABASE "parts_catalogue"')
    dsn = make_conninfo(server_dsn, dbname="parts_catalogue")
    db.migrate(dsn)
    t0 = time.perf_counter()
    with db.connect(dsn) as conn:
        for shard in discover_shards(tree):
            scan_shard(conn, shard, max_pixels=10**8)
        conn.execute("UPDATE processing_log SET status = 'uploaded' WHERE status = 'pending'")
        n = conn.execute("SELECT count(DISTINCT shard) AS n FROM processing_log WHERE status = 'uploaded'").fetchone()["n"]
    print(f"catalogue: {n} shards scanned in {time.perf_counter() - t0:.0f} s (not measured)", flush=True)
    return dsn


def _storage_dsn(server_dsn: str, name: str) -> str:
    """A fresh database for dagster-postgres, as a SQLAlchemy URL (unix socket of the embedded server)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    info = conninfo_to_dict(server_dsn)
    return f"postgresql://{info.get('user', 'postgres')}:{info.get('password', '')}@/{name}?host={info['host']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=5000)
    parser.add_argument("--storage", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--quick", action="store_true", help="200 shards, one repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work.resolve()
    if args.child:
        urls = json.loads(args.child)
        result = child(urls, work / "child", args.repeat)
        (work / "child" / "result.json").write_text(json.dumps(result))
        return None
    if args.quick:
        args.shards, args.repeat = 200, 1
    started = time.perf_counter()
    tree = work / f"tree-{args.shards}"
    ensure_tree(tree, args.shards)

    from assemblage_assets.core import db

    server_dsn = db.start_embedded(work / "pgdata")
    results: dict = {"date": datetime.now().isoformat(timespec="seconds"), "shards": args.shards,
                     "cpus": os.cpu_count(), "repeat": args.repeat, "storage": {}}
    try:
        catalogue = _catalogue(server_dsn, tree)
        for storage in [s.strip() for s in args.storage.split(",") if s.strip()]:
            if storage == "postgres":
                urls = [_storage_dsn(server_dsn, "dagster_a"), _storage_dsn(server_dsn, "dagster_b")]
            else:
                urls = [None, None]
            home = _dagster_home(work / "home-cli", None)
            env = {**os.environ, "IMAGES_DIR": str(tree), "DATABASE_URL": catalogue, "PYTHONPATH": str(REPO),
                   "ASSEMBLAGE_HOME": str(work / "state"), "DAGSTER_HOME": str(home),
                   "EMBEDDING_PROVIDER": "local_clip", "CLIP_MODEL": "clip-ViT-B-32"}
            env.pop("SUPABASE_DB_URL", None)
            shutil.rmtree(work / "child", ignore_errors=True)
            (work / "child").mkdir(parents=True)
            subprocess.run([sys.executable, __file__, "--child", json.dumps(urls), "--work", str(work),
                            "--repeat", str(args.repeat)], env=env, cwd=REPO, check=True)
            result = json.loads((work / "child" / "result.json").read_text())
            # the CLI runs against the instance that holds every partition (home-a of the child)
            env["DAGSTER_HOME"] = str(work / "child" / "home-a")
            result["code_location"] = _cli(env, args.repeat)
            results["storage"][storage] = result
            print_result(storage, result, args.shards)
    finally:
        db.stop_embedded(work / "pgdata")
    out = work / f"partitions_scale-{args.shards}.json"
    results["wall_seconds"] = round(time.perf_counter() - started)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out} (benchmark wall time {results['wall_seconds']} s)")
    return None


def print_result(storage: str, r: dict, shards: int) -> None:
    sp, me, cl = r["sensor_path"], r["missing_embeddings"], r["code_location"]
    print(f"\n{storage} instance storage, {shards} shards")
    rows = [
        ("register_shards (all new)", r["register_seconds"]),
        ("discover shards (listing, steady)", r["discover_seconds"]),
        (f"sensor path: {sp['ticks']} ticks, evaluate", sp["evaluate_seconds_total"]),
        ("sensor path: apply partition requests", sp["apply_seconds_total"]),
        ("sensor path: first tick", sp["first_tick_seconds"]),
        ("image_shards_sensor tick, all known", r["steady_tick_seconds"]),
        ("get_dynamic_partitions", r["get_dynamic_partitions_seconds"]),
        ("partitions_def.get_partition_keys", r["partition_keys_seconds"]),
        (f"missing_embeddings_sensor full tick ({me['full_tick_requests']} runs)", me["full_tick_seconds"]),
        (f"missing_embeddings_sensor next tick ({me['incremental_tick_requests']} runs)", me["incremental_tick_seconds"]),
        ("import definitions (new interpreter)", cl["python_import_definitions_seconds"]),
        ("defs.get_repository_def()", cl["get_repository_def_seconds"]),
        ("Definitions.validate_loadable", cl["validate_loadable_seconds"]),
        ("dagster definitions validate (wall)", cl["dagster_definitions_validate_seconds"]),
        ("dagster sensor preview image_shards_sensor", cl["dagster_sensor_preview_image_shards_seconds"]),
        ("dagster sensor preview missing_embeddings", cl["dagster_sensor_preview_missing_embeddings_seconds"]),
    ]
    for name, seconds in rows:
        print(f"  {name:<52} {seconds:8.3f} s")


if __name__ == "__main__":
    sys.exit(main())

"""End to end: generated photos through every stage of a shard, directly and through Dagster.

A tree of photographic JPEGs (``sample_data.make_photo``, 1600x1200 by default, quality 90,
camera EXIF with date and GPS; about 0.6 MB each) in shards of 1,000 (``shard-00`` ...) goes
through raw_files -> derivatives -> r2_objects (the local object store) -> embeddings (a
random-weight CLIP ViT-B/32 from ``tiny_clip``: the released architecture, so the compute per
image is the real one; it loads through the same sentence-transformers path as CLIP_MODEL),
on the embedded Postgres, in up to three modes:

    direct    the plain functions each asset calls, in the same order, with the same extra
              queries (status counts, samples, asset checks); the CLIP model loaded once per
              shard as each embed run loads it
    dagster   ``ingest_shard_job`` then ``embed_shard_job`` per shard with ``execute_in_process``
              on a DagsterInstance in a temp DAGSTER_HOME (``launch.run_partition``, what
              ``assemblage ingest``/``embed`` run); stage times are step start -> success from
              the event log, totals are run wall times
    cli       ``dagster asset materialize --select raw_files,derivatives,r2_objects,embeddings
              --partition <shard>`` in a subprocess per shard: adds process start, imports and
              loading the code location

Every mode runs in its own child process on a fresh database, derivative cache, object store
and Dagster home (stages are idempotent: a second run would do nothing). Peak memory is the
RSS of that process plus all its descendants (derive pool, Dagster subprocesses) sampled every
0.1 s with psutil; the JSON also has getrusage maxrss for self and the largest child. Modes run
interleaved for ``--repeat`` rounds and the best round counts (noise only slows). Overhead =
dagster total / direct total - 1 per 1,000-image shard; target <= 10%. Also reported: database
bytes per 1,000 images (pg_total_relation_size per table) and object bytes per image by kind.

Generated trees and the model are cached under ``--work`` (default
/tmp/assemblage-bench/end_to_end) so reruns reuse them; generation is not measured.

    .venv/bin/python benchmarks/end_to_end.py --quick                # 200 images, one round
    .venv/bin/python benchmarks/end_to_end.py                        # 1,000 images, 3 modes, 2 rounds
    .venv/bin/python benchmarks/end_to_end.py --images 10000 --modes direct,dagster --repeat 1
    .venv/bin/python benchmarks/end_to_end.py --from-state   # re-summarise the last run of each mode
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from machine import cpu_busy  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 1000
QUALITY = 90
TARGET_OVERHEAD = 0.10
DEFAULT_WORK = Path(os.environ.get("ASSEMBLAGE_BENCH_DIR") or "/tmp/assemblage-bench") / "end_to_end"


# --------------------------------------------------------------------------- sample tree


def _make_one(args: tuple[str, int, int, int]) -> None:
    from assemblage_assets.dev.sample_data import make_photo, photo_exif

    path, width, height, seed = args
    exif = photo_exif(make="Canon", model="Canon EOS R6", taken=datetime(2024, 1 + seed % 12, 1 + seed % 28, 12, 0, seed % 60),
                      gps=(48.1 + (seed % 100) / 1000, 11.5 + (seed % 70) / 1000))
    tmp = path + ".part"
    make_photo(width, height, seed).save(tmp, "JPEG", quality=QUALITY, exif=exif)
    os.replace(tmp, path)  # a killed generation never leaves a half-written photo behind


def ensure_tree(root: Path, images: int, size: tuple[int, int], shard_size: int = SHARD_SIZE, progress=print) -> list[str]:
    """``images`` photos in shards of ``shard_size`` (``shard-00`` ...), generated once and reused."""
    jobs = []
    shards = []
    for s in range((images + shard_size - 1) // shard_size):
        folder = root / f"shard-{s:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        shards.append(folder.name)
        for i in range(min(shard_size, images - s * shard_size)):
            path = folder / f"IMG_{i:04d}.JPG"
            if not path.exists():
                jobs.append((str(path), size[0], size[1], s * shard_size + i))
    if jobs:
        started = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_make_one, jobs, chunksize=8))
        progress(f"generated {len(jobs)} photos {size[0]}x{size[1]} in {time.perf_counter() - started:.0f} s (not measured)")
    return shards


STAGES = ("raw_files", "derivatives", "r2_objects", "embeddings")
MODES = ("direct", "dagster", "cli")
DB_TABLES = ("images", "processing_log", "image_embeddings", "image_tags", "embedding_models", "embedding_queue")
OBJECT_KINDS = ("original", "thumbnail", "watermarked")


# --------------------------------------------------------------------------- memory


class TreeSampler:
    """RSS of this process plus all its descendants (the derive pool, Dagster subprocesses),
    sampled every ``interval`` seconds; a stage's peak is the largest sample inside its window."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._me = psutil.Process()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._interval = interval

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.samples.append((time.time(), total))
            self._stop.wait(self._interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, windows: list[tuple[float, float]]) -> float:
        inside = [rss for t, rss in self.samples if any(a <= t <= b for a, b in windows)]
        return round(max(inside, default=0) / 2**20, 1)


# --------------------------------------------------------------------------- one mode (child process)


def _run_direct(shards: list[str], timings: dict[str, list[tuple[float, float]]], log) -> dict:
    """The plain functions each asset calls, in the asset's order, without Dagster."""
    from assemblage_assets.core import settings
    from resources import object_store
    from resources.image_library import ImageLibraryResource

    dsn = settings.database_url()
    library = ImageLibraryResource.from_env()
    store = object_store.from_env()
    per_shard = []
    for key in shards:
        spans = _direct_shard(dsn, key, library, store, timings)
        per_shard.append({"shard": key, **{k: round(v, 3) for k, v in spans.items()},
                          "total": round(sum(spans.values()), 3)})
        log(f"  direct {key}: {per_shard[-1]['total']:.1f} s")
    return {"per_shard": per_shard}


def _direct_shard(dsn: str, key: str, library, store, timings: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings import assets as ea
    from assemblage_assets.embeddings import retry_queue
    from assemblage_assets.embeddings.embed import embed_shard
    from assemblage_assets.embeddings.usage_log import run_cost
    from assemblage_assets.images import assets as oa
    from assemblage_assets.images import catalog_reports
    from assemblage_assets.images.derive import derive_shard
    from assemblage_assets.images.publish import publish_shard
    from assemblage_assets.images.scan import scan_shard
    from assemblage_assets.images.shards import resolve_shard
    from resources import embedding

    spans: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.time()
        out = fn()
        t1 = time.time()
        timings.setdefault(name, []).append((t0, t1))
        spans[name] = t1 - t0
        return out

    with db.connect(dsn) as conn:
        def scan() -> None:
            scan_shard(conn, resolve_shard(library.root, key), max_pixels=library.max_image_pixels)
            catalog_reports.status_counts(conn, key)

        def derive() -> None:
            derive_shard(conn, key, cache_dir=library.cache, spec=library.derivative_spec(), workers=library.derive_workers)
            catalog_reports.derived_samples(conn, key)
            catalog_reports.status_counts(conn, key)

        def publish() -> None:
            store.preflight()
            publish_shard(conn, key, store=store, cache_dir=library.cache)
            catalog_reports.status_counts(conn, key)
            oa._check_results(conn, key, store)

        timed("raw_files", scan)
        timed("derivatives", derive)
        timed("r2_objects", publish)
        # A Dagster run builds and loads the provider once per run: so does each shard here.
        provider = timed("model_load", lambda: _loaded(embedding.from_env()))

        def embeddings():
            report = embed_shard(conn, key, provider, dsn=dsn, cache_dir=library.cache, run_id=None)
            run_cost(conn, "direct")
            retry_queue.queue_counts(conn, report.model)
            ea._check_results(conn, key, provider)
            return report

        report = timed("embeddings", embeddings)
        assert report.counts["embedded"] > 0, report.counts
    return spans


def _loaded(provider):
    provider.load()
    return provider


def _step_windows(instance, run_id: str, timings: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Step start → success per asset from the run's event log (the stage time inside Dagster)."""
    starts: dict[str, float] = {}
    spans: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        if event.event_type_value == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in starts:
            timings.setdefault(entry.step_key, []).append((starts[entry.step_key], entry.timestamp))
            spans[entry.step_key] = entry.timestamp - starts[entry.step_key]
    return spans


def _run_dagster(shards: list[str], timings: dict[str, list[tuple[float, float]]], log) -> dict:
    """``ingest_shard_job`` then ``embed_shard_job`` per shard with ``execute_in_process`` on the
    instance of DAGSTER_HOME, as ``assemblage ingest``/``embed`` launch them (``launch.run_partition``)."""
    import dagster as dg

    from assemblage_assets.cli.launch import QUIET_LOGGING, run_partition
    from assemblage_assets.core import settings
    from assemblage_assets.definitions import defs
    from assemblage_assets.images.sensors import register_shards

    instance = dg.DagsterInstance.get()
    t0 = time.time()
    register_shards(instance, settings.images_dir())
    registered = time.time() - t0
    jobs = [defs.resolve_job_def("ingest_shard_job"), defs.resolve_job_def("embed_shard_job")]
    per_shard = []
    for key in shards:
        spans: dict[str, float] = {}
        wall = 0.0
        for job in jobs:
            t0 = time.time()
            run = run_partition(job, key, instance, QUIET_LOGGING)
            timings.setdefault("run:" + job.name, []).append((t0, time.time()))
            if not run.success:
                raise SystemExit(f"{job.name} {key} failed: {run.error}")
            wall += run.seconds
            spans.update(_step_windows(instance, run.run_id, timings))
        per_shard.append({"shard": key, **{k: round(v, 3) for k, v in spans.items()}, "total": round(wall, 3)})
        log(f"  dagster {key}: {wall:.1f} s")
    instance.dispose()
    return {"per_shard": per_shard, "register_seconds": round(registered, 3)}


def _run_cli(shards: list[str], timings: dict[str, list[tuple[float, float]]], log) -> dict:
    """``dagster asset materialize`` of all four assets per shard, in a subprocess: adds process
    start, imports and definitions loading to what ``dagster`` mode measures."""
    import dagster as dg

    from assemblage_assets.core import settings
    from assemblage_assets.images.sensors import register_shards

    instance = dg.DagsterInstance.get()
    register_shards(instance, settings.images_dir())
    exe = Path(sys.executable).parent / "dagster"
    per_shard = []
    for key in shards:
        t0 = time.time()
        subprocess.run(
            [str(exe), "asset", "materialize", "-m", "assemblage_assets.definitions",
             "--select", ",".join(STAGES), "--partition", key],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )
        wall = time.time() - t0
        timings.setdefault("run:cli", []).append((t0, t0 + wall))
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
        spans = _step_windows(instance, records[0].dagster_run.run_id, timings)
        per_shard.append({"shard": key, **{k: round(v, 3) for k, v in spans.items()}, "total": round(wall, 3)})
        log(f"  cli {key}: {wall:.1f} s")
    instance.dispose()
    return {"per_shard": per_shard}


def child(mode: str, shards: list[str], out: Path) -> None:
    """One mode in this (fresh) process; environment set by the parent."""
    log = functools.partial(print, flush=True)
    timings: dict[str, list[tuple[float, float]]] = {}
    runner = {"direct": _run_direct, "dagster": _run_dagster, "cli": _run_cli}[mode]
    t0 = time.time()
    with TreeSampler() as sampler:
        result = runner(shards, timings, log)
    t1 = time.time()
    result["peak_rss_mb"] = {name: sampler.peak_mb(w) for name, w in timings.items()}
    result["peak_rss_mb"]["all"] = sampler.peak_mb([(t0, t1)])
    result["maxrss_self_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["maxrss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent




def _storage(dsn: str, state: Path, images: int) -> dict:
    """Database bytes per table and object store bytes per kind, per 1,000 images."""
    from assemblage_assets.core import db

    with db.connect(dsn) as conn:
        tables = {t: conn.execute("SELECT pg_total_relation_size(%s::regclass) AS n", (t,)).fetchone()["n"]
                  for t in DB_TABLES}
        database = conn.execute("SELECT pg_database_size(current_database()) AS n").fetchone()["n"]
    kinds = dict.fromkeys(OBJECT_KINDS, 0)
    for path in (state / "objects").rglob("*"):
        kind = next((p for p in path.parts if p in kinds), None)
        if kind and path.is_file():
            kinds[kind] += path.stat().st_size
    per_k = 1000 / images
    return {
        "db_table_bytes_per_1000": {t: round(n * per_k) for t, n in tables.items()},
        "db_tables_total_bytes_per_1000": round(sum(tables.values()) * per_k),
        "db_database_bytes": database,
        "object_bytes_per_image": {k: round(n / images) for k, n in kinds.items()},
        "derivative_cache_bytes_per_image": round(
            sum(p.stat().st_size for p in (state / "derivatives").rglob("*") if p.is_file()) / images),
    }


def _fresh_database(server_dsn: str, name: str) -> str:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from assemblage_assets.core import db

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(server_dsn, dbname=name)
    db.migrate(dsn)
    return dsn


def run_mode(mode: str, round_no: int, shards: list[str], tree: Path, server_dsn: str, model: Path, work: Path,
             images: int) -> dict:
    """A fresh database, state folder and Dagster home, then the mode in a child process."""
    state = work / "state" / mode
    shutil.rmtree(state, ignore_errors=True)
    (state / "dagster").mkdir(parents=True)
    (state / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dsn = _fresh_database(server_dsn, f"e2e_{mode}")
    env = {
        **os.environ,
        "ASSEMBLAGE_HOME": str(state), "DAGSTER_HOME": str(state / "dagster"), "IMAGES_DIR": str(tree),
        "DATABASE_URL": dsn, "EMBEDDING_PROVIDER": "local_clip", "CLIP_MODEL": str(model),
        "PYTHONPATH": str(REPO),
    }
    env.pop("SUPABASE_DB_URL", None)
    out = state / "result.json"
    subprocess.run([sys.executable, __file__, "--child", mode, "--shards", ",".join(shards), "--out", str(out)],
                   env=env, check=True, cwd=REPO)
    result = json.loads(out.read_text())
    result.update(mode=mode, round=round_no, storage=_storage(dsn, state, images))
    return result


def summarise(results: list[dict], images_per_shard: dict[str, int]) -> dict:
    """Best round per mode; per-stage seconds and images/s summed over shards; overheads."""
    summary: dict = {}
    for mode in {r["mode"] for r in results}:
        runs = [r for r in results if r["mode"] == mode]
        best = min(runs, key=lambda r: sum(s["total"] for s in r["per_shard"]))
        n = sum(images_per_shard[s["shard"]] for s in best["per_shard"])
        stages = {}
        for stage in (*STAGES, "model_load"):
            seconds = sum(s.get(stage, 0.0) for s in best["per_shard"])
            if seconds:
                stages[stage] = {"seconds": round(seconds, 2), "images_per_s": round(n / seconds, 2),
                                 "peak_rss_mb": best["peak_rss_mb"].get(stage)}
        total = sum(s["total"] for s in best["per_shard"])
        summary[mode] = {
            "images": n, "shards": len(best["per_shard"]), "seconds": round(total, 2),
            "images_per_s": round(n / total, 2), "stages": stages, "per_shard": best["per_shard"],
            "peak_rss_mb": best["peak_rss_mb"]["all"], "maxrss_self_mb": best["maxrss_self_mb"],
            "maxrss_children_mb": best["maxrss_children_mb"], "storage": best["storage"],
            "rounds": [round(sum(s["total"] for s in r["per_shard"]), 2) for r in runs],
            **({"register_seconds": best["register_seconds"]} if "register_seconds" in best else {}),
        }
    direct = summary.get("direct")
    for mode in ("dagster", "cli"):
        if direct and mode in summary:
            d = {s["shard"]: s["total"] for s in direct["per_shard"]}
            ratios = [s["total"] / d[s["shard"]] - 1 for s in summary[mode]["per_shard"] if s["shard"] in d]
            summary[mode]["overhead_per_shard"] = [round(r, 4) for r in ratios]
            summary[mode]["overhead"] = round(summary[mode]["seconds"] / direct["seconds"] - 1, 4)
            summary[mode]["overhead_max_shard"] = round(max(ratios), 4) if ratios else None
    for mode in ("dagster", "cli"):
        if mode in summary:
            # Robust to a busy machine: time a run spends outside its steps (run and resource
            # setup, CLIP model load, event log writes, process start for the CLI).
            s = summary[mode]
            outside = s["seconds"] - sum(v["seconds"] for k, v in s["stages"].items() if k in STAGES)
            s["outside_steps_seconds_per_shard"] = round(outside / s["shards"], 2)
    return summary


def print_tables(summary: dict) -> None:
    modes = [m for m in MODES if m in summary]
    print(f"\n{'stage':<14}" + "".join(f"{m + ' s':>12}{'img/s':>9}{'peak MB':>9}" for m in modes))
    for stage in (*STAGES, "model_load"):
        row = f"{stage:<14}"
        for m in modes:
            s = summary[m]["stages"].get(stage)
            row += f"{s['seconds']:>12.1f}{s['images_per_s']:>9.1f}{s['peak_rss_mb'] or 0:>9.0f}" if s else " " * 30
        print(row)
    row = f"{'total':<14}"
    for m in modes:
        s = summary[m]
        row += f"{s['seconds']:>12.1f}{s['images_per_s']:>9.1f}{s['peak_rss_mb']:>9.0f}"
    print(row)
    print("\n(dagster/cli stage seconds are step start -> step success from the event log; their totals are run wall times)")
    for m in ("dagster", "cli"):
        if m in summary and "overhead" in summary[m]:
            s = summary[m]
            verdict = "PASS" if s["overhead_max_shard"] <= TARGET_OVERHEAD else "FAIL"
            print(f"{m} vs direct: overhead {s['overhead']:+.1%} overall, per shard "
                  f"{', '.join(f'{r:+.1%}' for r in s['overhead_per_shard'])} -> {verdict} (target <= {TARGET_OVERHEAD:.0%})")
    for m in ("dagster", "cli"):
        if m in summary:
            print(f"{m}: {summary[m]['outside_steps_seconds_per_shard']:.1f} s per shard outside the steps "
                  "(run + resource setup incl. the CLIP load, event log; process start for cli)")
    st = summary[modes[0]]["storage"]
    print(f"\nDB bytes per 1,000 images: {st['db_tables_total_bytes_per_1000'] / 1e6:.2f} MB "
          + ", ".join(f"{t} {n / 1e6:.2f}" for t, n in st["db_table_bytes_per_1000"].items()))
    print("object store bytes per image: " + ", ".join(f"{k} {n / 1e3:.0f} kB" for k, n in st["object_bytes_per_image"].items())
          + f"; derivative cache {st['derivative_cache_bytes_per_image'] / 1e3:.0f} kB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="photos in shards of --shard-size (default 1000)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    parser.add_argument("--size", default="1600x1200", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--modes", default="direct,dagster,cli", help="comma-separated: direct, dagster, cli")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best counts")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of trees and model, and scratch")
    parser.add_argument("--json", type=Path, help="results file (default WORK/end_to_end-<images>.json)")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--from-state", action="store_true",
                        help="run nothing: summarise the last finished run of each mode left in WORK/state")
    parser.add_argument("--quick", action="store_true", help="200 images in one shard, one round")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.shards.split(","), args.out)
    if args.quick:
        args.images, args.shard_size, args.repeat = 200, 200, 1
    width, height = (int(v) for v in args.size.lower().split("x"))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    work = args.work.resolve()
    suffix = "" if args.shard_size == SHARD_SIZE else f"-per{args.shard_size}"
    tree = work / f"tree-{width}x{height}{suffix}"
    started = time.perf_counter()
    shards = ensure_tree(tree, args.images, (width, height), args.shard_size)
    if args.generate_only:
        return None
    counts = {s: sum(1 for _ in (tree / s).iterdir()) for s in shards}

    from psycopg.conninfo import make_conninfo

    from assemblage_assets.core import db
    from assemblage_assets.dev.tiny_clip import build_clip_checkpoint

    model = work / "models" / "ViT-B-32"
    if not (model / "modules.json").is_file():
        build_clip_checkpoint(model, "ViT-B-32", seed=0)
    server_dsn = db.start_embedded(work / "pgdata")
    busy = cpu_busy()
    print(f"end to end: {args.images} photos {width}x{height} in {len(shards)} shard(s), modes {modes}, "
          f"{0 if args.from_state else args.repeat} round(s), cpus={os.cpu_count()}, CPU busy before start {busy:.0%}", flush=True)
    if busy is not None and busy > 0.1:
        print("warning: other processes use the CPU: figures will be slower than on an idle machine", flush=True)
    results = []
    try:
        for mode in modes if args.from_state else []:
            state = work / "state" / mode
            if (state / "result.json").is_file():
                result = json.loads((state / "result.json").read_text())
                dsn = make_conninfo(server_dsn, dbname=f"e2e_{mode}")
                result.update(mode=mode, round=0, storage=_storage(dsn, state, args.images))
                results.append(result)
        for round_no in range(0 if args.from_state else args.repeat):
            order = modes if round_no % 2 == 0 else modes[::-1]
            for mode in order:
                t0 = time.perf_counter()
                results.append(run_mode(mode, round_no, shards, tree, server_dsn, model, work, args.images))
                print(f"round {round_no + 1} {mode}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        db.stop_embedded(work / "pgdata")
    summary = summarise(results, counts)
    print_tables(summary)
    out = args.json or work / f"end_to_end-{args.images}.json"
    out.write_text(json.dumps({
        "date": datetime.now().isoformat(timespec="seconds"), "images": args.images, "size": f"{width}x{height}",
        "shard_size": args.shard_size, "cpus": os.cpu_count(), "cpu_busy_before": busy, "repeat": args.repeat,
        "wall_seconds": round(time.perf_counter() - started), "summary": summary, "raw": results,
    }, indent=2))
    print(f"\nresults: {out} (benchmark wall time {time.perf_counter() - started:.0f} s)")
    return None


if __name__ == "__main__":
    sys.exit(main())

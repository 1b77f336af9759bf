"""No-op rescans: what a rerun over an unchanged tree costs, against baselines of the same run.

Part 1, the scan (in process, one shard of ``--files`` tiny files in camera-like folders, scanned
once to fill the catalogue, then best of ``--repeat`` no-op passes):

    floor        ``os.scandir`` + ``stat`` over the tree, nothing else
    walk         ``scan.iter_shard_files`` (the walk and one ScanEntry per file)
    per-batch    the earlier scan: ``catalog.known_files`` per 256 files, compared in Python
    scan_shard   the stage (``images/rescan.py``): the walk's digest matches the last scan's,
                 nothing sent to the database
    full compare the stage without that shortcut (a shard with a change): the walk streamed
                 into the database by COPY, one join for the new/changed/deleted files

Target: ``scan_shard`` at >= 50% of the floor's files/s.

Part 2, ``assemblage ingest`` through the CLI (own ASSEMBLAGE_HOME, embedded Postgres, local
object store; ``--shards`` shards of ``--shard-files`` distinct tiny PNGs, ingested once):
a no-op ingest of one shard and of all of them, with the read-only check that skips idle
shards (the default) and with ``--every-shard`` (a Dagster run per shard, ``r2_objects``
skipping the settled shard). The marginal cost of one more unchanged shard is
``(t_all - t_one) / (shards - 1)``; the projection for 5M files in 5,000 shards is
``t_one + 4,999 x marginal`` (target <= 10 min), meaningful with shards of 1,000 files.

    .venv/bin/python benchmarks/rescan.py [--files 50000] [--shards 8] [--shard-files 1000]
    .venv/bin/python benchmarks/rescan.py --skip-cli      # part 1 only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_busy  # noqa: E402
from scan_memory import build_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
SCAN_TARGET = 0.50
PROJECTED_SHARDS = 5_000
PROJECTION_TARGET_S = 600


def floor(root: Path) -> int:
    """The cheapest walk Python can do: scandir + stat, nothing kept."""
    stack, files = [str(root)], 0
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat()
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                else:
                    files += 1
    return files


def per_batch_scan(conn, shard) -> int:
    """The comparison ``scan_shard`` made before: one ``known_files`` query per 256 files."""
    from assemblage_assets.core.batching import batched
    from assemblage_assets.images import catalog
    from assemblage_assets.images.scan import iter_shard_files

    changed = 0
    for batch in batched(iter_shard_files(shard), 256):
        known = catalog.known_files(conn, [e.db_path for e in batch])
        changed += sum(not catalog.is_unchanged(e, known.get(e.db_path)) for e in batch)
    return changed


def full_compare(conn, shard) -> int:
    """``scan_shard`` without the digest shortcut: what a shard with a change pays."""
    from assemblage_assets.images import rescan
    from assemblage_assets.images.scan import scan_shard

    rescan.forget_scan(conn, shard.key)
    return scan_shard(conn, shard, max_pixels=10**8).counts["unchanged"]


def scan_part(files: int, repeat: int, work: Path) -> dict[str, float]:
    from psycopg.conninfo import make_conninfo

    from assemblage_assets.core import db
    from assemblage_assets.images.scan import iter_shard_files, scan_shard
    from assemblage_assets.images.shards import Shard

    started = time.perf_counter()
    shard_dir = build_tree(work / "scan-tree", files)
    print(f"created {files:,} files in {time.perf_counter() - started:.1f} s")
    server = db.start_embedded(work / "pgdata-scan")
    try:
        with db.connect(server) as conn:
            conn.execute("CREATE DATABASE bench_rescan")
        dsn = make_conninfo(server, dbname="bench_rescan")
        db.migrate(dsn)
        shard = Shard("bench", shard_dir, recursive=True)
        with db.connect(dsn) as conn:
            started = time.perf_counter()
            first = scan_shard(conn, shard, max_pixels=10**8)
            print(f"first scan (probe every file): {time.perf_counter() - started:.1f} s, {first.counts['new']:,} new")
            conn.execute("VACUUM ANALYZE processing_log")
            runs = {
                "floor": lambda: floor(shard_dir),
                "walk": lambda: sum(1 for _ in iter_shard_files(shard)),
                "per-batch": lambda: per_batch_scan(conn, shard),
                "scan_shard": lambda: scan_shard(conn, shard, max_pixels=10**8).counts["unchanged"],
                "full compare": lambda: full_compare(conn, shard),
            }
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(repeat):  # interleaved: a busy neighbour slows every method alike
                for name, run in runs.items():
                    t = time.perf_counter()
                    result = run()
                    best[name] = min(best[name], time.perf_counter() - t)
                    if name in ("scan_shard", "full compare") and result != files:
                        raise SystemExit(f"{name} saw {result} unchanged of {files}")
    finally:
        db.stop_embedded(work / "pgdata-scan")
    rates = {name: files / seconds for name, seconds in best.items()}
    print(f"\n| {'method':<13} | {'files/s':>9} | {'of floor':>8} |")
    print(f"|{'-' * 15}|{'-' * 10}:|{'-' * 9}:|")
    for name, rate in rates.items():
        print(f"| {name:<13} | {rate:9,.0f} | {rate / rates['floor']:8.0%} |")
    ratio = rates["scan_shard"] / rates["floor"]
    verdict = "PASS" if ratio >= SCAN_TARGET else "FAIL"
    print(f"{verdict}: scan_shard at {ratio:.0%} of the scandir+stat floor (target >= {SCAN_TARGET:.0%}); "
          f"{rates['scan_shard'] / rates['per-batch']:.2f}x the per-batch comparison")
    print(f"without the digest shortcut (a shard with a change): {rates['full compare'] / rates['floor']:.0%} of the floor, "
          f"{rates['full compare'] / rates['per-batch']:.2f}x the per-batch comparison")
    return {f"{name}_files_per_s": rate for name, rate in rates.items()} | {"scan_of_floor": ratio}


def _unique_png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), ((i * 7) % 256, (i // 256) % 256, (i // 65536) % 256)).save(buf, "PNG")
    return buf.getvalue()


def _cli(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "assemblage"), *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"assemblage {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started


def cli_part(shards: int, shard_files: int, repeat: int, work: Path) -> dict[str, float]:
    images = work / "images"
    names = [f"roll-{i:04d}" for i in range(shards)]
    for s, name in enumerate(names):
        folder = images / name
        folder.mkdir(parents=True)
        for i in range(shard_files):
            (folder / f"IMG_{i:05d}.png").write_bytes(_unique_png(s * shard_files + i))
    home = work / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_DB_URL", "R2_BUCKET", "S3_BUCKET")}
    env.update(ASSEMBLAGE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), IMAGES_DIR=str(images),
               EMBEDDING_PROVIDER="local_clip", DERIVE_WORKERS="1")  # 8x6 px images: a process pool costs more than it saves
    try:
        started = time.perf_counter()
        _cli(env, "ingest", "--images-dir", str(images))
        print(f"\nfirst ingest of {shards} x {shard_files:,} images: {time.perf_counter() - started:.1f} s")
        cases = {
            "skip idle, 1 shard": ("ingest", "--shard", names[0]),
            f"skip idle, {shards} shards": ("ingest",),
            "every shard, 1 shard": ("ingest", "--every-shard", "--shard", names[0]),
            f"every shard, {shards} shards": ("ingest", "--every-shard"),
        }
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(repeat):
            for case, args in cases.items():
                best[case] = min(best[case], _cli(env, *args, "--images-dir", str(images)))
        check = json.loads(subprocess.run([sys.executable, __file__, "--_plan", str(images)], env=env,
                                          capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    finally:
        subprocess.run([str(BIN / "assemblage"), "db", "stop"], env=env, capture_output=True, check=False)
    out: dict[str, float] = {"check_per_shard_s": check["per_shard_s"]}
    print(f"\nthe read-only check alone (in process, {check['shards']} shards, best of 3): "
          f"{check['per_shard_s'] * 1000:.1f} ms per {shard_files:,}-file shard")
    print(f"\n| no-op `assemblage ingest` | 1 shard s | {shards} shards s | per extra shard ms | "
          f"5M files / {PROJECTED_SHARDS:,} shards |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("skip idle", "every shard"):
        one, many = best[f"{mode}, 1 shard"], best[f"{mode}, {shards} shards"]
        marginal = max(0.0, (many - one) / (shards - 1))
        projected = one + (PROJECTED_SHARDS - 1) * marginal
        out[f"{mode}_marginal_s"], out[f"{mode}_projected_s"] = marginal, projected
        print(f"| {mode} | {one:.2f} | {many:.2f} | {marginal * 1000:.0f} | {projected / 60:.1f} min |")
    projected = out["skip idle_projected_s"]
    verdict = "PASS" if projected <= PROJECTION_TARGET_S else "FAIL"
    print(f"{verdict}: a no-op rescan of 5M files in {PROJECTED_SHARDS:,} shards projects to {projected / 60:.1f} min "
          f"(target <= {PROJECTION_TARGET_S // 60} min); a run per shard would take "
          f"{out['every shard_projected_s'] / 60:.1f} min")
    if shard_files != 1000:
        print(f"(shards of {shard_files:,} files measured, not the 1,000 of the projection: indicative only)")
    return out


def _plan_child(images: Path) -> None:
    """Child process in the CLI part's environment: time ``idle.plan_ingest`` over every shard."""
    from assemblage_assets.core import db
    from assemblage_assets.images import idle
    from assemblage_assets.images.shards import discover_shards
    from resources import object_store

    keys = sorted(s.key for s in discover_shards(images))
    best = float("inf")
    with object_store.from_env().process_config_and_initialize_cm() as store, db.connect(db.resolve_dsn()) as conn:
        for _ in range(3):
            started = time.perf_counter()
            plans = list(idle.plan_ingest(conn, images, keys, store))
            best = min(best, time.perf_counter() - started)
    if not all(p.idle for p in plans):
        raise SystemExit(f"expected every shard idle: {[p for p in plans if not p.idle][:3]}")
    print(json.dumps({"shards": len(keys), "per_shard_s": best / len(keys)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000, help="files of the in-process scan shard")
    parser.add_argument("--repeat", type=int, default=5, help="passes per method (best kept)")
    parser.add_argument("--shards", type=int, default=8, help="shards of the CLI tree")
    parser.add_argument("--shard-files", type=int, default=1000, help="files per shard of the CLI tree")
    parser.add_argument("--cli-repeat", type=int, default=2)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--tmpdir")
    parser.add_argument("--_plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._plan:
        _plan_child(Path(args._plan))
        return

    busy = cpu_busy()
    print(f"rescan benchmark; python {sys.version.split()[0]}; {os.cpu_count()} cores"
          + (f", {busy:.0%} busy before start" if busy is not None else ""))
    work = Path(tempfile.mkdtemp(prefix="assemblage-bench-rescan-", dir=args.tmpdir))
    figures: dict[str, float] = {}
    try:
        if not args.skip_scan:
            figures |= scan_part(args.files, args.repeat, work)
        if not args.skip_cli:
            figures |= cli_part(args.shards, args.shard_files, args.cli_repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

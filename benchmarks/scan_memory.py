"""Peak memory of the streaming shard scan for 10,000 vs 100,000 files.

Builds two temporary trees of tiny PNG files (a shard folder with nested subfolders,
camera-like file names), then measures, each in a fresh child process so the numbers are not
polluted by anything else:

    stream      ``scan.iter_shard_files(Shard(...))``, consumed one entry at a time -- the
                project's scan (``scan_shard`` consumes it in batches of 256)
    naive walk  ``list(os.walk(...))`` and the full list of file paths built from it

Peak memory is the child's ``ru_maxrss`` after the scan; "over start" subtracts the peak
after interpreter start-up and imports, i.e. what the scan itself added. Target (from the
issue): the stream's peak for 100,000 files within 60 MB of its peak for 10,000.

    .venv/bin/python benchmarks/scan_memory.py [--small 10000] [--large 100000] [--tmpdir DIR]

Creating the trees takes a few seconds on a quiet ext4 disk, but can take a minute right
after many files were deleted on the same filesystem (a previous run, a test suite): ext4
then steps over recently freed inodes one by one when allocating new ones. Point ``--tmpdir``
at another filesystem (even tmpfs: the measured number is the scanner's memory, not the
disk's speed) or wait a minute.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 60
FILES_PER_DIR = 250  # leaf folders of 250 files, two levels deep, like a camera dump


def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (120, 160, 200)).save(buf, "PNG")
    return buf.getvalue()


def build_tree(root: Path, count: int) -> Path:
    """``root/shard/YYYY/DDD_CAMERA/IMG_nnnnnnn.png`` with ``count`` files; returns the shard."""
    data = _tiny_png()
    shard = root / "shard"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    leaf = None
    for i in range(count):
        if i % FILES_PER_DIR == 0:
            group = i // FILES_PER_DIR
            leaf = shard / f"{2000 + group // 20}" / f"{group % 20 + 100:03d}_CAMERA"
            leaf.mkdir(parents=True)
        fd = os.open(f"{leaf}/IMG_{i:07d}.png", flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return shard


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(mode: str, shard_dir: str) -> dict[str, float]:
    """Child process: import, note the peak so far, scan, report the new peak."""
    from assemblage_assets.images.scan import iter_shard_files
    from assemblage_assets.images.shards import Shard

    start_mb = _peak_mb()
    started = time.perf_counter()
    if mode == "stream":
        files = 0
        for entry in iter_shard_files(Shard("bench", Path(shard_dir), recursive=True)):
            files += entry.error_kind is None
    elif mode == "naive":
        walked = list(os.walk(shard_dir))
        paths = [os.path.join(d, f) for d, _, names in walked for f in names]
        files = len(paths)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {
        "files": files,
        "seconds": time.perf_counter() - started,
        "start_mb": start_mb,
        "peak_mb": _peak_mb(),
    }


def _run_child(mode: str, shard: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--_measure", mode, "--_shard", str(shard)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} scan of {shard} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--tmpdir", help="where to build the trees (default: the system temp dir)")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    parser.add_argument("--_shard", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._measure:
        print(json.dumps(_measure(args._measure, args._shard)))
        return

    print(
        f"scan memory benchmark: {args.small:,} vs {args.large:,} files, "
        f"{FILES_PER_DIR} per leaf folder; python {sys.version.split()[0]}"
    )
    work = Path(tempfile.mkdtemp(prefix="assemblage-bench-scan-", dir=args.tmpdir))
    try:
        shards = {}
        for count in (args.small, args.large):
            started = time.perf_counter()
            shards[count] = build_tree(work / f"tree-{count}", count)
            print(f"created {count:,} files in {time.perf_counter() - started:.1f} s")
        print()

        results = {}
        for mode in ("stream", "naive"):
            for count, shard in shards.items():
                results[mode, count] = r = _run_child(mode, shard)
                if r["files"] != count:
                    raise SystemExit(f"{mode}: found {r['files']} of {count} files")

        labels = {"stream": "iter_shard_files (stream)", "naive": "list(os.walk) + path list"}
        print(f"| {'scan':<26} | {'files':>7} | {'peak RSS MB':>11} | {'over start MB':>13} | {'files/s':>9} |")
        print(f"|{'-' * 28}|{'-' * 8}:|{'-' * 12}:|{'-' * 14}:|{'-' * 10}:|")
        for (mode, count), r in results.items():
            print(
                f"| {labels[mode]:<26} | {count:>7,} | {r['peak_mb']:11.1f} | "
                f"{r['peak_mb'] - r['start_mb']:13.1f} | {count / r['seconds']:9,.0f} |"
            )
        print()
        for mode in ("stream", "naive"):
            grow = (
                round(results[mode, args.large]["peak_mb"] - results[mode, args.small]["peak_mb"], 1) + 0.0
            )  # no "-0.0"
            print(f"{labels[mode]}: {args.large:,} files peak {grow:+.1f} MB vs {args.small:,}")
        grow = round(results["stream", args.large]["peak_mb"] - results["stream", args.small]["peak_mb"], 1) + 0.0
        verdict = "PASS" if grow <= TARGET_MB else "FAIL"
        print(
            f"{verdict}: stream scan of {args.large:,} files is within {grow:.1f} MB of "
            f"{args.small:,} (target <= {TARGET_MB} MB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

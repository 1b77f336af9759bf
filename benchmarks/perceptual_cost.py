"""Added cost of the perceptual hashes (issue 12) in the derivatives stage: pHash + dHash of each
image's in-memory thumbnail (``core.perceptual.perceptual_hashes``, what ``derive_image`` does),
against ``derive_image`` itself on the same files, one process. Target: ≤ 10% per image.

Run by ``benchmarks/derivatives.py`` on its generated 12 MP JPEGs (in a fresh process), or alone:

    .venv/bin/python benchmarks/perceptual_cost.py [--images 8] [--size 4000x3000] [--src DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def measure(src_dir: Path, repeat: int) -> dict[str, float]:
    from added_cost import derive_seconds, source_jpegs, thumbnails  # benchmarks/ is on sys.path

    from assemblage_assets.core.perceptual import perceptual_hashes

    files = source_jpegs(src_dir)
    derive_s = derive_seconds(files, repeat)
    thumbs = thumbnails(files)
    perceptual_hashes(thumbs[0])  # imports scipy.fftpack once, as the first image of a worker does
    hash_s = []
    for _ in range(max(5, repeat)):
        started = time.perf_counter()
        for thumb in thumbs:
            perceptual_hashes(thumb)
        hash_s.append(time.perf_counter() - started)
    n = len(files)
    return {"images": n, "derive_ms": min(derive_s) / n * 1000, "hash_ms": min(hash_s) / n * 1000}


def report(src_dir: Path, repeat: int = 3) -> str:
    """Measure in a fresh process (its own memory, no warm caches) and format the result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--_measure", str(src_dir), "--repeat", str(repeat)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"perceptual hash measurement failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    base = r["derive_ms"] - r["hash_ms"]  # derive_image includes the hashes
    ratio = r["hash_ms"] / base
    return "\n".join([
        f"perceptual hashes (issue 12), {r['images']} images, one process, best of {repeat} rounds:",
        f"| {'measurement':<44} | {'per image':>12} | {'vs derive':>9} |",
        f"|{'-' * 46}|{'-' * 13}:|{'-' * 10}:|",
        f"| {'derive_image without the hashes':<44} | {base:9.2f} ms | {'1.00x':>9} |",
        f"| {'pHash + dHash of the in-memory thumbnail':<44} | {r['hash_ms']:9.3f} ms | {ratio:8.2%} |",
        f"{'PASS' if ratio <= 0.10 else 'FAIL'}: pHash + dHash add {ratio:.2%} per image (target <= 10%)",
    ])


def main() -> None:
    import added_cost  # benchmarks/ is on sys.path when a script runs

    added_cost.main(__doc__.split("\n\n")[0], measure, report, "phash")


if __name__ == "__main__":
    main()

"""Added cost of the issue-12 enrichments of the derivatives stage: ThumbHash and reverse geocoding.

    ThumbHash    ``core.thumbhash.image_thumbhash`` on each image's in-memory thumbnail (what
                 ``derive_image`` does), against ``derive_image`` itself on the same files, one
                 process: the ratio is the share of the stage the placeholder costs.
    geocoding    ``core.geocode``: loading the GeoNames places once per process (only a shard
                 with GPS positions pays it), then the lookup per image in pages of 500 (what
                 ``images.places.locate_shard`` sends), against the same ``derive_image`` time.

Run by ``benchmarks/derivatives.py`` on its generated JPEGs (in a fresh process), or alone:

    .venv/bin/python benchmarks/enrichments.py [--images 8] [--size 4000x3000] [--src DIR]
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

LOOKUPS = 10_000  # positions geocoded for the per-image figure
PAGE = 500  # images per page in places.locate_shard


def measure(src_dir: Path, repeat: int) -> dict[str, float]:
    """Per-image milliseconds of derive_image, the ThumbHash and a geocoding lookup; load seconds."""
    from added_cost import derive_seconds, source_jpegs, thumbnails  # benchmarks/ is on sys.path

    from assemblage_assets.core import geocode
    from assemblage_assets.core.thumbhash import image_thumbhash

    files = source_jpegs(src_dir)
    derive_s = derive_seconds(files, repeat)
    thumbs = thumbnails(files)
    thumbhash_s = []
    for _ in range(max(5, repeat)):
        started = time.perf_counter()
        for thumb in thumbs:
            image_thumbhash(thumb)
        thumbhash_s.append(time.perf_counter() - started)

    started = time.perf_counter()
    geocoder = geocode.Geocoder()  # a fresh load, as the first shard with GPS of a process pays it
    load_s = time.perf_counter() - started
    rng = random.Random(12)
    positions = [(rng.uniform(-60, 70), rng.uniform(-180, 180)) for _ in range(LOOKUPS)]
    lookup_s = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(0, LOOKUPS, PAGE):
            geocoder.lookup(positions[i : i + PAGE])
        lookup_s.append(time.perf_counter() - started)

    n = len(files)
    return {
        "images": n,
        "derive_ms": min(derive_s) / n * 1000,
        "thumbhash_ms": min(thumbhash_s) / n * 1000,
        "geocode_load_s": load_s,
        "geocode_lookup_ms": min(lookup_s) / LOOKUPS * 1000,
    }


def report(src_dir: Path, repeat: int = 3) -> str:
    """Measure in a fresh process (its own memory, no warm caches) and format the result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--_measure", str(src_dir), "--repeat", str(repeat)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"enrichment measurement failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    base = r["derive_ms"] - r["thumbhash_ms"]  # derive_image includes the ThumbHash
    th, geo = r["thumbhash_ms"] / base, r["geocode_lookup_ms"] / base
    return "\n".join([
        f"enrichments (issue 12), {r['images']} images, one process, best of {repeat} rounds:",
        f"| {'measurement':<44} | {'per image':>12} | {'vs derive':>9} |",
        f"|{'-' * 46}|{'-' * 13}:|{'-' * 10}:|",
        f"| {'derive_image without the ThumbHash':<44} | {base:9.2f} ms | {'1.00x':>9} |",
        f"| {'ThumbHash of the in-memory thumbnail':<44} | {r['thumbhash_ms']:9.3f} ms | {th:8.2%} |",
        f"| {'geocoding lookup (pages of 500)':<44} | {r['geocode_lookup_ms'] * 1000:9.2f} us | {geo:8.3%} |",
        f"| {'geocoder load, once per process with GPS':<44} | {r['geocode_load_s']:10.2f} s | {'':>9} |",
        f"{'PASS' if th + geo <= 0.05 else 'FAIL'}: ThumbHash + geocoding add {th + geo:.2%} per image "
        "(budget <= 5%; the one-off load is amortised over the shard)",
    ])


def main() -> None:
    import added_cost  # benchmarks/ is on sys.path when a script runs

    added_cost.main(__doc__.split("\n\n")[0], measure, report, "enrich")


if __name__ == "__main__":
    main()

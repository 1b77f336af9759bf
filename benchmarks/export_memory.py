"""Peak memory of ``assemblage export`` (``embeddings/export.py``) for a small and a large catalogue.

Fills an embedded Postgres with a synthetic catalogue (``images`` rows with EXIF, a path each,
three tags and a ``--dim``-d vector per image), then exports it to Parquet with vectors and to
CSV, each in a fresh child process reading its own ``ru_maxrss``, once for ``--small`` and once
for ``--large`` images. The export streams a server-side cursor in chunks, so the peak should not
grow with the catalogue. Target: the large export's peak within 50 MB of the small one's, per
format. Throughput (rows/s) is printed too.

    .venv/bin/python benchmarks/export_memory.py [--small 10000] [--large 100000] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 50
MODEL = "bench-export"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill(dsn: str, count: int, dim: int) -> None:
    """A synthetic catalogue of ``count`` images (written directly: a fixture, not product code)."""
    from assemblage_assets.core import db

    with db.connect(dsn) as conn:
        conn.execute(
            """INSERT INTO images (id, content_hash, bytes, width, height, format, original_ext, original_key,
                                   exif_data, captured_at, original_url, thumbnail_url, preview_url, uploaded_at,
                                   caption)
               SELECT md5(g::text)::uuid, md5(g::text), 500000 + g, 1600, 1200, 'JPEG', 'jpg',
                      'original/2024/01/' || md5(g::text) || '.jpg',
                      jsonb_build_object('make', 'Canon', 'model', 'EOS ' || (g %% 7), 'iso', 100 * (1 + g %% 16)),
                      timestamp '2024-01-01' + g * interval '1 minute',
                      'https://img.example.org/original/' || g, 'https://img.example.org/thumbnail/' || g,
                      'https://img.example.org/watermarked/' || g, now(), 'a photo number ' || g
               FROM generate_series(1, %s) g""",
            (count,),
        )
        conn.execute(
            """INSERT INTO processing_log (local_path, shard, image_id, status, file_size, file_mtime_ns)
               SELECT '/library/roll-' || (g / 1000) || '/IMG_' || g || '.jpg', 'roll-' || (g / 1000),
                      md5(g::text)::uuid, 'indexed', 500000 + g, g
               FROM generate_series(1, %s) g""",
            (count,),
        )
        conn.execute(
            """INSERT INTO image_tags (image_id, tag, confidence, model)
               SELECT md5(g::text)::uuid, t, 0.1 * k, %s
               FROM generate_series(1, %s) g, unnest(ARRAY['car', 'street', 'night']) WITH ORDINALITY AS x(t, k)""",
            (MODEL, count),
        )
        conn.execute(
            """INSERT INTO image_embeddings (image_id, model, provider, dim, embedding)
               SELECT md5(g::text)::uuid, %s, 'local_clip', %s,
                      (SELECT array_agg(random())::real[] FROM generate_series(1, %s) WHERE g > 0)::vector
               FROM generate_series(1, %s) g""",
            (MODEL, dim, dim, count),
        )
        conn.execute("VACUUM ANALYZE")


def _child(dsn: str, fmt: str, out: str) -> None:
    from assemblage_assets.core import db
    from assemblage_assets.embeddings.export import export_catalogue

    start = _peak_mb()  # after the imports (pyarrow, numpy): what the export itself adds is the rest
    with db.connect(dsn) as conn:
        report = export_catalogue(conn, Path(out), fmt, model=MODEL)
    print(json.dumps({"rows": report.rows, "seconds": report.seconds, "start_mb": start, "peak_mb": _peak_mb(),
                      "file_mb": Path(out).stat().st_size / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tmpdir")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(*args._child)
        return

    from psycopg.conninfo import make_conninfo

    from assemblage_assets.core import db

    work = Path(tempfile.mkdtemp(prefix="assemblage-bench-export-", dir=args.tmpdir))
    server = db.start_embedded(work / "pgdata")
    results = {}
    try:
        for count in (args.small, args.large):
            with db.connect(server) as conn:
                conn.execute(f"CREATE DATABASE bench_export_{count}")
            dsn = make_conninfo(server, dbname=f"bench_export_{count}")
            db.migrate(dsn)
            started = time.perf_counter()
            fill(dsn, count, args.dim)
            print(f"filled {count:,} images with {args.dim}-d vectors in {time.perf_counter() - started:.1f} s")
            for fmt in ("parquet", "csv"):
                out = work / f"catalogue-{count}.{fmt}"
                proc = subprocess.run([sys.executable, __file__, "--_child", dsn, fmt, str(out)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"export failed:\n{proc.stderr}")
                results[fmt, count] = r = json.loads(proc.stdout.splitlines()[-1])
                if r["rows"] != count:
                    raise SystemExit(f"{fmt}: exported {r['rows']} of {count}")
                out.unlink()
    finally:
        db.stop_embedded(work / "pgdata")
        shutil.rmtree(work, ignore_errors=True)

    print("\n| format, with vectors | images | peak RSS MB | over start MB | rows/s | file MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for (fmt, count), r in results.items():
        print(f"| {fmt} | {count:,} | {r['peak_mb']:.1f} | {r['peak_mb'] - r['start_mb']:.1f} | "
              f"{r['rows'] / r['seconds']:,.0f} | {r['file_mb']:.1f} |")
    for fmt in ("parquet", "csv"):
        grow = round(results[fmt, args.large]["peak_mb"] - results[fmt, args.small]["peak_mb"], 1) + 0.0
        verdict = "PASS" if grow <= TARGET_MB else "FAIL"
        print(f"{verdict}: {fmt} export of {args.large:,} images peaks {grow:+.1f} MB vs {args.small:,} "
              f"(target <= {TARGET_MB} MB)")


if __name__ == "__main__":
    main()

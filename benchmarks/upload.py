"""Upload benchmark for ``r2_objects`` against moto's standalone server on 127.0.0.1.

1. Throughput: objects/s publishing a synthetic shard at concurrency 1 vs 16, straight to moto
   (loopback) and through a proxy adding a fixed per-request latency (a WAN round trip).
2. Request counts: rerunning an already-published shard of ~10,000 objects with a HEAD per
   object (the older loader's check) vs listing the shard's prefixes, counted server-side by the
   proxy in front of moto.

Runs ``publish_shard`` (the code behind the asset) on an embedded Postgres in a temp folder;
nothing leaves 127.0.0.1.

    .venv/bin/python benchmarks/upload.py            # full run (~3 min on 2 cores)
    .venv/bin/python benchmarks/upload.py --quick    # smaller sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.s3_loopback import ACCESS_KEY, REGION, SECRET_KEY, LoopbackProxy, make_bucket  # noqa: E402

from assemblage_assets.core import db  # noqa: E402
from assemblage_assets.images.publish import publish_shard  # noqa: E402
from resources.object_store import S3ObjectStore  # noqa: E402

SHARD = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto in its own process, so the server does not share the client's GIL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(port)
    return proc, f"http://127.0.0.1:{port}"


def start_latency_proxy(upstream: str, latency_ms: float) -> tuple[subprocess.Popen, str]:
    port_line = subprocess.Popen(
        [sys.executable, __file__, "--serve-proxy", upstream, str(latency_ms / 1000)],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = port_line.stdout.readline().strip()
    return port_line, url


def serve_proxy(upstream: str, latency: float) -> None:
    host, port = upstream.removeprefix("http://").split(":")
    proxy = LoopbackProxy((host, int(port)), latency=latency).start()
    print(proxy.url, flush=True)
    while True:
        time.sleep(3600)


def make_shard(dsn: str, root: Path, images: int, sizes: tuple[int, int, int]) -> None:
    """``images`` processed images with random bytes: originals over 12 capture months."""
    original_size, preview_size, thumbnail_size = sizes
    cache, sources = root / "cache", root / "src"
    (cache / "thumbnail").mkdir(parents=True)
    (cache / "watermarked").mkdir(parents=True)
    sources.mkdir()
    image_rows, log_rows = [], []
    for n in range(images):
        image_id = str(uuid.uuid4())
        data = os.urandom(original_size)
        path = sources / f"IMG_{n:05d}.jpg"
        path.write_bytes(data)
        (cache / "thumbnail" / f"{image_id}.webp").write_bytes(os.urandom(thumbnail_size))
        (cache / "watermarked" / f"{image_id}.jpg").write_bytes(os.urandom(preview_size))
        key = f"original/2019/{n % 12 + 1:02d}/{image_id}.jpg"
        image_rows.append(
            (
                image_id,
                hashlib.sha256(data).hexdigest(),
                len(data),
                key,
                f"thumbnail/{image_id}.webp",
                f"watermarked/{image_id}.jpg",
            )
        )
        log_rows.append((str(path), SHARD, image_id))
    with db.connect(dsn) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("TRUNCATE processing_log, images CASCADE")  # a throwaway database
        cur.executemany(
            """INSERT INTO images (id, content_hash, bytes, width, height, format, original_ext, original_key,
                                   thumbnail_key, preview_key, derived_at)
               VALUES (%s, %s, %s, 4000, 3000, 'JPEG', 'jpg', %s, %s, %s, now())""",
            image_rows,
        )
        cur.executemany(
            "INSERT INTO processing_log (local_path, shard, image_id, status) VALUES (%s, %s, %s, 'processed')",
            log_rows,
        )


def reset_status(dsn: str) -> None:
    with db.connect(dsn) as conn:
        conn.execute("UPDATE processing_log SET status = 'processed'")
        conn.execute(
            "UPDATE images SET uploaded_at = NULL, original_url = NULL, thumbnail_url = NULL, preview_url = NULL"
        )


def store_for(endpoint: str, bucket: str, **fields: object) -> S3ObjectStore:
    return S3ObjectStore(
        bucket=bucket,
        endpoint_url=endpoint,
        region_name=REGION,
        addressing_style="path",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        **fields,
    )


def publish(dsn: str, root: Path, store: S3ObjectStore) -> tuple[float, dict]:
    with db.connect(dsn) as conn:
        report = publish_shard(conn, SHARD, store=store, cache_dir=root / "cache")
    assert report.counts["images_failed"] == 0 and report.counts["images_deferred"] == 0, report.counts
    return report.seconds, dict(report.counts) | {"bytes": report.bytes}


def throughput(dsn: str, root: Path, moto_url: str, endpoint: str, label: str, concurrency: int) -> dict:
    bucket = f"tp-{uuid.uuid4().hex[:10]}"
    make_bucket(moto_url, bucket)
    reset_status(dsn)
    seconds, counts = publish(dsn, root, store_for(endpoint, bucket, concurrency=concurrency))
    objects = counts["objects_uploaded"]
    row = {
        "endpoint": label,
        "concurrency": concurrency,
        "objects": objects,
        "seconds": round(seconds, 2),
        "objects/s": round(objects / seconds, 1),
        "MB/s": round(counts["bytes"] / seconds / 1e6, 1),
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images for the throughput runs (3 objects each)")
    parser.add_argument("--latency-ms", type=float, default=25.0, help="added per-request latency of the WAN runs")
    parser.add_argument("--count-images", type=int, default=3334, help="images of the already-published shard")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the benchmark itself")
    parser.add_argument("--serve-proxy", nargs=2, metavar=("UPSTREAM", "LATENCY_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        serve_proxy(args.serve_proxy[0], float(args.serve_proxy[1]))
        return
    if args.quick:
        args.images, args.count_images = 30, 200

    with tempfile.TemporaryDirectory(prefix="assemblage-bench-") as tmp:
        tmp_path = Path(tmp)
        pgdata = tmp_path / "pgdata"
        dsn = os.environ.get("DATABASE_URL") or db.start_embedded(pgdata)
        db.migrate(dsn)
        moto, moto_url = start_moto()
        latency_proxy, latency_url = start_latency_proxy(moto_url, args.latency_ms)
        try:
            # 1. throughput: ~360 KB per image (256 KB original, 96 KB preview, 12 KB thumbnail)
            root = tmp_path / "tp"
            make_shard(dsn, root, args.images, (256_000, 96_000, 12_000))
            rows = []
            for label, endpoint in (("loopback", moto_url), (f"+{args.latency_ms:g} ms/request", latency_url)):
                for concurrency in (1, 16):
                    rows.append(throughput(dsn, root, moto_url, endpoint, label, concurrency))

            # 2. request counts: an already-published shard of ~10,000 small objects
            root = tmp_path / "counts"
            make_shard(dsn, root, args.count_images, (2_000, 1_000, 500))
            bucket = f"counts-{uuid.uuid4().hex[:8]}"
            make_bucket(moto_url, bucket)
            publish(dsn, root, store_for(moto_url, bucket, concurrency=16))
            host, port = moto_url.removeprefix("http://").split(":")
            proxy = LoopbackProxy((host, int(port))).start()
            counts = []
            for mode in ("head", "list"):
                proxy.reset()
                seconds, report = publish(dsn, root, store_for(proxy.url, bucket, concurrency=16, existence_check=mode))
                seen = proxy.counts()
                row = {
                    "check": mode,
                    "objects": report["objects_skipped"],
                    "requests": sum(seen.values()),
                    **{k: seen[k] for k in ("HEAD", "LIST", "PUT") if seen[k] or k == "PUT"},
                    "seconds": round(seconds, 2),
                }
                print(row, flush=True)
                counts.append(row)
            proxy.stop()
        finally:
            latency_proxy.kill()
            moto.kill()
            if not os.environ.get("DATABASE_URL"):
                db.stop_embedded(pgdata)

    print("\n| endpoint | concurrency | objects | seconds | objects/s | MB/s |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['concurrency']} | {r['objects']} | {r['seconds']} | {r['objects/s']} | {r['MB/s']} |"
        )
    print(
        "\n| existence check | objects | requests | HEAD | LIST | PUT | seconds |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in counts:
        print(
            f"| {r['check']} | {r['objects']} | {r['requests']} | {r.get('HEAD', 0)} | {r.get('LIST', 0)} "
            f"| {r['PUT']} | {r['seconds']} |"
        )


if __name__ == "__main__":
    main()

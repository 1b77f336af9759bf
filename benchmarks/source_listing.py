"""Peak memory of listing a bucket source: 10,000 vs 100,000 keys (issue 11).

A loopback ListObjectsV2 stand-in on 127.0.0.1 (this process) serves generated pages of
``--page-size`` keys with continuation tokens, as S3/R2/MinIO do; moto would need 100,000 real
PUTs first, minutes of the machine shared with everyone. Each measurement runs in a fresh child
process through the product's client (``S3Source.entries``: boto3's paginator):

    stream      ``S3Source.entries(shard)`` consumed one entry at a time -- what ``raw_files``
                does (it takes them in batches of 256)
    full list   ``list(S3Source.entries(shard))``: the whole listing held at once (the baseline)

"over start" is the child's peak RSS after the listing minus its peak after imports and client
creation. Target: the stream's peak for 100,000 keys within 60 MB of its peak for 10,000.

    .venv/bin/python benchmarks/source_listing.py [--small 10000] [--large 100000] [--page-size 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

TARGET_MB = 60
ROOT = Path(__file__).resolve().parents[1]


def _page(bucket: str, prefix: str, start: int, count: int, page_size: int) -> bytes:
    end = min(count, start + page_size)
    items = "".join(
        f"<Contents><Key>{escape(prefix)}{i // 250:05d}/IMG_{i:07d}.jpg</Key><LastModified>2024-05-01T10:00:00.000Z"
        f"</LastModified><ETag>&quot;{i:032x}&quot;</ETag><Size>{2_000_000 + i}</Size>"
        f"<StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(start, end)
    )
    more = end < count
    token = f"<NextContinuationToken>{end}</NextContinuationToken>" if more else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{end - start}</KeyCount>"
        f"<MaxKeys>{page_size}</MaxKeys><IsTruncated>{'true' if more else 'false'}</IsTruncated>{token}{items}"
        f"</ListBucketResult>"
    ).encode()


class ListingStandIn:
    """``GET /b<count>?list-type=2``: ``count`` keys under any prefix, in continuation pages."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                bucket = parts.path.strip("/").split("/")[0]
                body = _page(bucket, query.get("prefix", ""), int(query.get("continuation-token", 0)),
                             int(bucket[1:]), int(query.get("max-keys", 1000)))
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(endpoint: str, count: int, mode: str, page_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    from resources.image_source import S3Source, SourceShard

    source = S3Source(bucket=f"b{count}", prefix="photos/", endpoint_url=endpoint, region_name="us-east-1",
                      addressing_style="path", page_size=page_size, access_key_env="BENCH_KEY", secret_key_env="BENCH_SECRET")
    shard = SourceShard(source.uri, "shard")
    source.client()
    start = _peak_mb()
    if mode == "stream":
        seen = sum(1 for _ in source.entries(shard))
    else:
        held = list(source.entries(shard))
        seen = len(held)
    print(json.dumps({"seen": seen, "start_mb": start, "peak_mb": _peak_mb(), "requests": source.request_counts()}))


def measure(endpoint: str, count: int, mode: str, page_size: int) -> dict:
    env = {**os.environ, "BENCH_KEY": "AKIABENCHMARK0000001", "BENCH_SECRET": "bench-secret"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", endpoint, str(count), mode, str(page_size)],
        env=env, capture_output=True, text=True, check=True, timeout=1800,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seen"] == count, result
    result["over_start_mb"] = result["peak_mb"] - result["start_mb"]
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()
    server = ListingStandIn()
    rows = {}
    for mode in ("stream", "full list"):
        for count in (args.small, args.large):
            rows[(mode, count)] = measure(server.url, count, "stream" if mode == "stream" else "list", args.page_size)
            r = rows[(mode, count)]
            print(f"{mode:<10} {count:>8,} keys: peak {r['peak_mb']:6.1f} MB, over start {r['over_start_mb']:6.1f} MB, "
                  f"{r['requests'].get('ListObjectsV2', 0)} ListObjectsV2 pages")
    growth = rows[("stream", args.large)]["peak_mb"] - rows[("stream", args.small)]["peak_mb"]
    naive = rows[("full list", args.large)]["peak_mb"] - rows[("full list", args.small)]["peak_mb"]
    print(f"stream: {args.large:,} keys peak {growth:+.1f} MB vs {args.small:,} (target within {TARGET_MB} MB): "
          f"{'PASS' if growth <= TARGET_MB else 'FAIL'}")
    print(f"full list: {naive:+.1f} MB for the same growth; stream/full-list growth ratio "
          f"{(growth / naive) if naive else float('nan'):.2f}")
    return 0 if growth <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())

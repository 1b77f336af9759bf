"""What a quiet tick of the uploads sensor costs: the full listing (the baseline, and still the
path of a bucket without a queue) vs S3 event notifications in SQS vs Dropbox's change
cursor, measured in the same run.

A bucket of ``--objects`` keys in ``--shards`` prefixes on moto's standalone server, behind the
counting proxy (127.0.0.1), and the same tree in the loopback Dropbox (official SDK, HTTPS).
Each mode first runs its first tick (the one full listing), then ``--ticks`` quiet ticks
through ``uploads_feed.plan_tick`` (the code behind the sensor); printed per quiet tick: the
requests the server counted and the median wall time, with the listing as the baseline. A
small ``--page-size`` stands in for a bigger bucket: requests per listing grow with
objects / page size, a queue's or cursor's stay one call.

    .venv/bin/python benchmarks/uploads_ticks.py [--objects 2000] [--shards 20] [--page-size 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.dropbox_loopback import DropboxServer, DropboxStandIn  # noqa: E402
from support.s3_loopback import ACCESS_KEY, REGION, SECRET_KEY, S3Env  # noqa: E402

from assemblage_assets.images.uploads_feed import UploadsCursor, plan_tick  # noqa: E402
from resources.image_source import from_env  # noqa: E402
from resources.upload_queue import UploadQueue  # noqa: E402

S3_LIST_USD_PER_1000 = 0.005  # S3 Standard LIST/PUT class requests (us-east-1)
SQS_USD_PER_MILLION = 0.40  # SQS standard queue requests, past the free tier


def _ticks(source_uri: str, queue: bool, ticks: int, counts) -> list[tuple[Counter[str], float]]:
    """The first tick, then ``ticks`` quiet ones: (requests counted, seconds) of each quiet one."""
    cursor, out = UploadsCursor(), []
    for i in range(ticks + 1):
        sources = from_env(source_uri)
        q = UploadQueue.from_env() if queue else None
        before = counts()
        start = time.perf_counter()
        plan = plan_tick(sources, sources[0], cursor, queue=q, now=time.time())
        elapsed = time.perf_counter() - start
        cursor = plan.cursor
        if i:
            # the listing re-requests shards inside its 5 min overlap under their old run keys
            assert queue is False and "s3://" in source_uri or not plan.shards, "a quiet tick found uploads"
            out.append((counts() - before, elapsed))
    return out


def _proxy_counts(s3: S3Env) -> Counter[str]:
    out: Counter[str] = Counter()
    for seen in list(s3.proxy.seen):
        target = next((v for k, v in seen.headers.items() if k.lower() == "x-amz-target"), "")
        out[target.removeprefix("AmazonSQS.") if target else ("LIST" if seen.is_list else seen.method)] += 1
    return out


def bucket_modes(objects: int, shards: int, page_size: int, ticks: int) -> dict[str, list]:
    import boto3

    s3 = S3Env.shared()
    bucket = s3.new_bucket("ticks")
    client = s3.direct()
    for i in range(objects):
        client.put_object(Bucket=bucket, Key=f"u/user-{i % shards:03d}/p{i:06d}.jpg", Body=b"x")
    sqs = boto3.client("sqs", endpoint_url=s3.upstream_url, region_name=REGION,
                       aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    queue_url = sqs.create_queue(QueueName=f"{bucket}-q")["QueueUrl"]
    os.environ.update({"SOURCE_S3_ENDPOINT_URL": s3.url, "SOURCE_S3_REGION": REGION, "SOURCE_S3_ACCESS_KEY_ID": ACCESS_KEY,
                       "SOURCE_S3_SECRET_ACCESS_KEY": SECRET_KEY, "SOURCE_S3_PAGE_SIZE": str(page_size),
                       "UPLOADS_QUEUE_URL": queue_url, "UPLOADS_QUEUE_ENDPOINT_URL": s3.url})
    uri = f"s3://{bucket}/u"
    return {"S3 full listing (baseline)": _ticks(uri, False, ticks, lambda: _proxy_counts(s3)),
            "S3 notifications in SQS": _ticks(uri, True, ticks, lambda: _proxy_counts(s3))}


def dropbox_mode(objects: int, shards: int, page_size: int, ticks: int) -> dict[str, list]:
    stand_in = DropboxStandIn()
    for i in range(objects):
        stand_in.put(f"/Inbox/user-{i % shards:03d}/p{i:06d}.jpg", b"x")
    with tempfile.TemporaryDirectory() as tmp, DropboxServer(stand_in, Path(tmp) / "ca.pem") as server:
        os.environ.update({"DROPBOX_API_HOST": server.host, "DROPBOX_API_CONTENT_HOST": server.host,
                           "DROPBOX_CA_CERTS": str(server.ca_pem), "DROPBOX_ACCESS_TOKEN": stand_in.token,
                           "DROPBOX_PAGE_SIZE": str(page_size)})
        cursor_ticks = _ticks("dropbox:/Inbox", False, ticks, lambda: Counter(stand_in.calls))
        # the baseline: what a tick cost when Dropbox was listed in full every time
        listing = []
        for _ in range(ticks):
            sources = from_env("dropbox:/Inbox")
            before, start = Counter(stand_in.calls), time.perf_counter()
            for ref_shard in sources[0].shards():
                sum(1 for _ in sources[0].entries(ref_shard))
            listing.append((Counter(stand_in.calls) - before, time.perf_counter() - start))
    return {"Dropbox full listing (baseline)": listing, "Dropbox list_folder cursor": cursor_ticks}


def _report(rows: dict[str, list], baseline: str) -> None:
    base = statistics.median(t for _, t in rows[baseline])
    for name, ticks in rows.items():
        calls = ticks[-1][0]
        wall = statistics.median(t for _, t in ticks)
        print(f"  {name:<32} {sum(calls.values()):>5} requests/tick {dict(calls)}; median {wall * 1000:8.1f} ms "
              f"({wall / base:.3f} of the baseline)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args()
    for name in ("IMAGE_SOURCES", "UPLOADS_RECONCILE_SECONDS", "UPLOADS_LISTING_BUDGET_SECONDS", "R2_ACCOUNT_ID",
                 "S3_ENDPOINT_URL"):
        os.environ.pop(name, None)
    print(f"{args.objects:,} objects in {args.shards} shards, {args.page_size} keys per listing page, "
          f"{args.ticks} quiet ticks per mode")
    bucket = bucket_modes(args.objects, args.shards, args.page_size, args.ticks)
    _report(bucket, "S3 full listing (baseline)")
    _report(dropbox_mode(args.objects, args.shards, args.page_size, args.ticks), "Dropbox full listing (baseline)")
    lists_5m = 5_000_000 // 1000 + 1
    per_day = 24 * 60
    print(f"at 5M objects, 1,000 keys per page, a tick a minute: the listing is ~{lists_5m:,} LIST requests a tick, "
          f"${lists_5m * per_day / 1000 * S3_LIST_USD_PER_1000:,.2f}/day; the queue "
          f"{sum(bucket['S3 notifications in SQS'][-1][0].values())} SQS request(s) a quiet tick, "
          f"${per_day * 2 / 1e6 * SQS_USD_PER_MILLION:.4f}/day with a delete per busy tick")
    return 0


if __name__ == "__main__":
    sys.exit(main())

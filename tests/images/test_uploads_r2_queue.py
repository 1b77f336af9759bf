"""The uploads sensor on an R2 bucket through its event notifications in a Cloudflare Queue,
read over HTTP pull with the official ``cloudflare`` SDK: the bucket is moto's S3 server
(127.0.0.1, behind the counting proxy) standing in for R2, the queue the loopback Queues
stand-in (tests/support/cfqueues_loopback.py), which counts every pull and ack. A quiet tick
is one pull and no LIST; an upload's notification gives one run for its shard; deletions
request nothing; a malformed message is recorded and acknowledged; a tick evaluated again
with the old cursor (a crash) loses nothing and the next tick empties the queue."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from support.cfqueues_loopback import QueuesServer, QueuesStandIn
from support.s3_loopback import ACCESS_KEY, REGION, SECRET_KEY, S3Env

from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images.uploads_sensor import uploads_sensor
from resources.image_library import ImageLibraryResource


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    make_photo(32, 24, seed).save(out, "JPEG", quality=80)
    return out.getvalue()


def notification(bucket: str, action: str, key: str, account: str = "acc", **extra: object) -> dict:
    """An R2 event notification body as R2 documents it ("Message format")."""
    obj: dict = {"key": key}
    if action not in ("DeleteObject", "LifecycleDeletion"):
        obj |= {"size": 1234, "eTag": f"etag-{key}"}
    return {"account": account, "action": action, "bucket": bucket, "object": obj,
            "eventTime": "2026-12-02T06:10:00.379Z", **extra}


@pytest.fixture
def r2(monkeypatch: pytest.MonkeyPatch):
    s3 = S3Env.shared()
    bucket = s3.new_bucket("r2events")
    s3.direct().put_object(Bucket=bucket, Key="u/alice/a.jpg", Body=jpeg(1))
    s3.direct().put_object(Bucket=bucket, Key="u/bob/b.jpg", Body=jpeg(2))
    stand_in = QueuesStandIn()
    with QueuesServer(stand_in) as server:
        for name, value in (("SOURCE_S3_ENDPOINT_URL", s3.url), ("SOURCE_S3_REGION", REGION),
                            ("SOURCE_S3_ACCESS_KEY_ID", ACCESS_KEY), ("SOURCE_S3_SECRET_ACCESS_KEY", SECRET_KEY),
                            ("UPLOADS_SOURCE", f"s3://{bucket}/u"),
                            ("UPLOADS_QUEUE_URL", f"cfqueue://{stand_in.account_id}/{stand_in.queue_id}"),
                            ("UPLOADS_QUEUE_API_TOKEN", stand_in.token), ("CLOUDFLARE_BASE_URL", server.base_url)):
            monkeypatch.setenv(name, value)
        for name in ("IMAGE_SOURCES", "UPLOADS_RECONCILE_SECONDS", "UPLOADS_QUEUE_VISIBILITY_SECONDS",
                     "UPLOADS_LISTING_BUDGET_SECONDS", "UPLOADS_QUEUE_MAX_MESSAGES", "CLOUDFLARE_API_TOKEN",
                     "UPLOADS_QUEUE_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        yield s3, bucket, stand_in


def _library(tmp_path: Path, sources: str) -> ImageLibraryResource:
    return ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                image_sources=sources)


def _tick(instance: dg.DagsterInstance, library: ImageLibraryResource, cursor: str | None):
    with dg.build_sensor_context(instance=instance, resources={"library": library}, cursor=cursor) as context:
        return uploads_sensor(context)


def _counted(s3: S3Env, queue: QueuesStandIn, tick) -> tuple[dg.SensorResult, Counter[str]]:
    """The tick's result and its requests: Queues calls by route, bucket requests (LIST or method)."""
    s3.proxy.reset()
    before = Counter(queue.calls)
    result = tick()
    counts = Counter(queue.calls) - before
    counts.update("LIST" if seen.is_list else seen.method for seen in s3.proxy.seen)
    assert isinstance(result, dg.SensorResult), result
    return result, counts


def _runs(result: dg.SensorResult) -> dict[str, str]:
    return {r.partition_key: r.run_key for r in result.run_requests}


def test_r2_notifications_in_a_cloudflare_queue_replace_the_listing(r2, tmp_path: Path) -> None:
    s3, bucket, queue = r2
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()

    # the first tick lists the bucket once (what predates the notifications) and pulls the queue
    first, counts = _counted(s3, queue, lambda: _tick(instance, library, None))
    assert counts["LIST"] >= 1 and counts["pull"] == 1 and counts["ack"] == 0
    assert sorted(_runs(first)) == ["alice", "bob"] and json.loads(first.cursor)["reconciled_at"] > 0
    instance.add_dynamic_partitions("image_shards", ["alice", "bob"])

    quiet, counts = _counted(s3, queue, lambda: _tick(instance, library, first.cursor))
    assert counts == Counter({"pull": 1}) and not quiet.run_requests
    assert "no new uploads" in quiet.skip_reason.skip_message
    # leased for at least the SQS path's rule: twice the sensor interval + 60 s
    assert queue.visibility_timeouts_ms and min(queue.visibility_timeouts_ms) >= (2 * 60 + 60) * 1000

    s3.direct().put_object(Bucket=bucket, Key="u/bob/Straße 1.jpg", Body=jpeg(3))
    queue.send(notification(bucket, "PutObject", "u/bob/Straße 1.jpg"))
    queue.send(notification(bucket, "DeleteObject", "u/alice/a.jpg"))
    queue.send(notification(bucket, "LifecycleDeletion", "u/alice/old.jpg"))
    queue.send(notification("another-bucket", "PutObject", "u/carol/x.jpg"))  # not the source's bucket
    queue.send(notification(bucket, "PutObject", "archive/x.jpg"))  # outside the source prefix
    queue.send("{not json", content_type="text")
    queue.send({"action": "PutObject", "bucket": bucket})  # no object
    third, counts = _counted(s3, queue, lambda: _tick(instance, library, quiet.cursor))
    assert counts == Counter({"pull": 1})  # no LIST, no GET/HEAD: the notification is enough
    assert list(_runs(third)) == ["bob"] and not third.dynamic_partitions_requests
    cursor = json.loads(third.cursor)
    assert len(cursor["acks"]) == 7 and cursor["problems"] == 2
    assert any("not JSON" in p for p in cursor["recent_problems"])
    assert queue.leased == 7 and queue.backlog == 7

    # crash: the third tick's cursor was never committed, so nothing was acknowledged. Once the
    # leases end the messages are pulled again and the old cursor asks for the same run key
    again, counts = _counted(s3, queue, lambda: _tick(instance, library, quiet.cursor))
    assert not again.run_requests and counts == Counter({"pull": 1})  # still leased: not yet back
    queue.expire_leases()
    again, counts = _counted(s3, queue, lambda: _tick(instance, library, quiet.cursor))
    assert _runs(again) == _runs(third) and counts == Counter({"pull": 1})

    # the tick after the committed cursor acknowledges them all: the queue is empty
    fourth, counts = _counted(s3, queue, lambda: _tick(instance, library, again.cursor))
    assert counts == Counter({"ack": 1, "pull": 1}) and not fourth.run_requests
    assert queue.backlog == 0 and "acks" not in json.loads(fourth.cursor)
    queue.expire_leases()
    fifth, counts = _counted(s3, queue, lambda: _tick(instance, library, fourth.cursor))
    assert counts == Counter({"pull": 1}) and not fifth.run_requests


def test_deletions_request_nothing_and_copies_and_multipart_do(r2, tmp_path: Path) -> None:
    s3, bucket, queue = r2
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    first = _tick(instance, library, None)
    instance.add_dynamic_partitions("image_shards", list(_runs(first)))

    queue.send(notification(bucket, "DeleteObject", "u/alice/a.jpg"))
    queue.send(notification(bucket, "LifecycleDeletion", "u/bob/b.jpg"))
    deleted, counts = _counted(s3, queue, lambda: _tick(instance, library, first.cursor))
    assert not deleted.run_requests and counts == Counter({"pull": 1})
    assert len(json.loads(deleted.cursor)["acks"]) == 2 and "problems" not in json.loads(deleted.cursor)

    queue.send(notification(bucket, "CopyObject", "u/dave/copy.jpg",
                            copySource={"bucket": bucket, "object": "u/alice/a.jpg"}))
    queue.send(notification(bucket, "CompleteMultipartUpload", "u/erin/big.jpg"))
    created, counts = _counted(s3, queue, lambda: _tick(instance, library, deleted.cursor))
    assert sorted(_runs(created)) == ["dave", "erin"] and counts == Counter({"ack": 1, "pull": 1})
    assert queue.backlog == 2  # the two deletions are acknowledged, the new ones wait for the next tick
    assert sorted(created.dynamic_partitions_requests[0].partition_keys) == ["dave", "erin"]


def test_a_large_backlog_is_pulled_in_bounded_batches(r2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3, bucket, queue = r2
    monkeypatch.setenv("UPLOADS_QUEUE_MAX_MESSAGES", "150")
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    first = _tick(instance, library, None)
    for i in range(160):
        queue.send(notification(bucket, "PutObject", f"u/frank/{i}.jpg"))
    busy, counts = _counted(s3, queue, lambda: _tick(instance, library, first.cursor))
    assert counts == Counter({"pull": 2}) and list(_runs(busy)) == ["frank"]  # 100 + 50 of 160
    assert len(json.loads(busy.cursor)["acks"]) == 150
    rest, counts = _counted(s3, queue, lambda: _tick(instance, library, busy.cursor))
    assert counts == Counter({"ack": 2, "pull": 1}) and list(_runs(rest)) == ["frank"]
    assert _runs(rest)["frank"] != _runs(busy)["frank"] and queue.backlog == 10


def test_a_rejected_token_keeps_the_old_cursor(r2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3, bucket, queue = r2
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.setenv("UPLOADS_QUEUE_API_TOKEN", "wrong-token")
    with dg.build_sensor_context(instance=instance, resources={"library": library}, cursor=None) as context:
        result = uploads_sensor(context)
    assert isinstance(result, dg.SkipReason) and "cannot read the uploads queue" in result.skip_message
    assert "HTTP 403" in result.skip_message and "wrong-token" not in result.skip_message
    assert queue.calls["pull"] == 1  # a 403 is not retried


# --- plain functions ----------------------------------------------------------------------------


def test_r2_event_parsing() -> None:
    from resources.cloudflare_queue import parse_r2_event
    from resources.upload_queue import MalformedEventError

    created, problems = parse_r2_event(json.dumps(notification("b", "PutObject", "u/bob/Stra%C3%9Fe 1.jpg")))
    assert [(c.bucket, c.key, c.size, c.etag) for c in created] == [("b", "u/bob/Stra%C3%9Fe 1.jpg", 1234,
                                                                    "etag-u/bob/Stra%C3%9Fe 1.jpg")]
    assert created[0].event_time == pytest.approx(1796191800.379) and problems == []
    for action in ("DeleteObject", "LifecycleDeletion", "SomeFutureAction"):
        assert parse_r2_event(json.dumps(notification("b", action, "u/x.jpg"))) == ([], [])
    for body in ("{", "[]", json.dumps({"bucket": "b"}), json.dumps({"action": "PutObject", "bucket": "b"}),
                 json.dumps({**notification("b", "PutObject", "k"), "eventTime": "yesterday"}),
                 json.dumps({**notification("b", "PutObject", "k"), "object": {"key": ""}})):
        with pytest.raises(MalformedEventError):
            parse_r2_event(body)


def test_pulled_bodies_are_decoded_by_content_type() -> None:
    import base64

    from resources.cloudflare_queue import decode_body

    doc = '{"action": "PutObject"}'
    b64 = base64.b64encode(doc.encode()).decode()
    assert decode_body(b64, {"CF-Content-Type": "json"}) == doc
    assert decode_body(b64, {"CF-Content-Type": "bytes"}) == doc
    assert decode_body(doc, {"CF-Content-Type": "text"}) == doc
    assert decode_body(doc, None) == doc and decode_body(b64, {}) == doc
    assert decode_body("not base64!", {"CF-Content-Type": "json"}) == "not base64!"  # left for the parser to record


def test_cloudflare_queue_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from assemblage_assets.images.uploads_feed import queue_from_env
    from resources.cloudflare_queue import CloudflareQueue
    from resources.upload_queue import QueueError, UploadQueue

    for name in ("UPLOADS_QUEUE_API_TOKEN", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_BASE_URL",
                 "UPLOADS_QUEUE_VISIBILITY_SECONDS", "UPLOADS_QUEUE_MAX_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UPLOADS_QUEUE_URL", "cfqueue://acc123/q456")
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "secret-token")
    queue = CloudflareQueue.from_env(min_visibility=180)
    assert queue is not None and (queue.account_id, queue.queue_id, queue.token_env) == ("acc123", "q456",
                                                                                         "CLOUDFLARE_API_TOKEN")
    assert queue.visibility_timeout == 600 and queue.base_url is None and "secret-token" not in repr(queue)
    monkeypatch.setenv("UPLOADS_QUEUE_VISIBILITY_SECONDS", "30")
    assert CloudflareQueue.from_env(min_visibility=180).visibility_timeout == 180
    monkeypatch.setenv("UPLOADS_QUEUE_VISIBILITY_SECONDS", "999999")
    assert CloudflareQueue.from_env().visibility_timeout == 43200
    assert UploadQueue.from_env() is None and isinstance(queue_from_env(), CloudflareQueue)
    monkeypatch.setenv("UPLOADS_QUEUE_URL", "cfqueue://acc123")
    with pytest.raises(QueueError) as bad:
        CloudflareQueue.from_env()
    assert bad.value.config
    monkeypatch.setenv("UPLOADS_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads")
    assert CloudflareQueue.from_env() is None and isinstance(queue_from_env(), UploadQueue)
    monkeypatch.delenv("UPLOADS_QUEUE_URL")
    assert queue_from_env() is None

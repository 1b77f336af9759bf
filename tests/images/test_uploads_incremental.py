"""The uploads sensor without a full listing per tick: Dropbox's change cursor against the
loopback Dropbox (official SDK), and S3 event notifications in SQS on moto's server
(127.0.0.1, through the counting proxy). Every request is counted by the server side: a quiet
tick makes no full listing, a new upload gives one run for its shard, a malformed message is
recorded and handled, and a tick evaluated again with the old cursor (a crash) loses nothing."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from support.dropbox_loopback import DropboxServer, DropboxStandIn
from support.s3_loopback import ACCESS_KEY, REGION, SECRET_KEY, S3Env

from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images.shards import shard_key
from assemblage_assets.images.uploads_sensor import uploads_sensor
from resources.image_library import ImageLibraryResource

ACCOUNT = "123456789012"  # moto's default account: S3 notifications go to this account's queues


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    make_photo(32, 24, seed).save(out, "JPEG", quality=80)
    return out.getvalue()


def _library(tmp_path: Path, sources: str) -> ImageLibraryResource:
    return ImageLibraryResource(images_dir=str(tmp_path), derivative_cache_dir=str(tmp_path / "cache"),
                                image_sources=sources)


def _tick(instance: dg.DagsterInstance, library: ImageLibraryResource, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources={"library": library}, cursor=cursor) as context:
        result = uploads_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def _runs(result: dg.SensorResult) -> dict[str, str]:
    return {r.partition_key: r.run_key for r in result.run_requests}


# --- Dropbox ----------------------------------------------------------------------------------


@pytest.fixture
def dropbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stand_in = DropboxStandIn()
    with DropboxServer(stand_in, tmp_path / "ca.pem") as server:
        for name, value in (("DROPBOX_API_HOST", server.host), ("DROPBOX_API_CONTENT_HOST", server.host),
                            ("DROPBOX_CA_CERTS", str(server.ca_pem)), ("DROPBOX_ACCESS_TOKEN", stand_in.token),
                            ("DROPBOX_PAGE_SIZE", "2"), ("UPLOADS_SOURCE", "dropbox:/Inbox")):
            monkeypatch.setenv(name, value)
        for name in ("DROPBOX_APP_KEY", "DROPBOX_REFRESH_TOKEN", "IMAGE_SOURCES", "UPLOADS_QUEUE_URL",
                     "UPLOADS_LISTING_BUDGET_SECONDS"):
            monkeypatch.delenv(name, raising=False)
        yield stand_in


def _calls_during(stand_in: DropboxStandIn, tick) -> tuple[dg.SensorResult, Counter[str]]:
    before = Counter(stand_in.calls)
    result = tick()
    return result, Counter(stand_in.calls) - before


def test_dropbox_ticks_ask_only_for_changes(dropbox: DropboxStandIn, tmp_path: Path) -> None:
    for i, path in enumerate(("/Inbox/alice/a.jpg", "/Inbox/alice/2024/b.jpg", "/Inbox/bob/c.jpg")):
        dropbox.put(path, jpeg(i))
    library = _library(tmp_path, "dropbox:/Inbox")
    instance = dg.DagsterInstance.ephemeral()

    # an upload landing while the first tick lists the folder: it must come with the next changes
    route = dropbox.route

    def upload_during_listing(name: str, arg: dict, auth: str):
        if name == "files/list_folder" and "/Inbox/carol/late.jpg" not in dropbox.files:
            dropbox.put("/Inbox/carol/late.jpg", jpeg(9))
        return route(name, arg, auth)

    dropbox.route = upload_during_listing  # type: ignore[method-assign]
    first, calls = _calls_during(dropbox, lambda: _tick(instance, library, None))
    dropbox.route = route  # type: ignore[method-assign]
    assert calls["files/list_folder/get_latest_cursor"] == 1 and calls["files/list_folder"] >= 1
    assert {"alice", "bob"} <= set(_runs(first))
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == sorted(_runs(first))
    assert json.loads(first.cursor)["dropbox"]
    instance.add_dynamic_partitions("image_shards", list(_runs(first)))

    # the next tick: only the change call, and the upload made during the listing is in it
    second, calls = _calls_during(dropbox, lambda: _tick(instance, library, first.cursor))
    assert calls == Counter({"files/list_folder/continue": 1})
    assert list(_runs(second)) == ["carol"]

    quiet, calls = _calls_during(dropbox, lambda: _tick(instance, library, second.cursor))
    assert calls == Counter({"files/list_folder/continue": 1}) and not quiet.run_requests
    assert "no new uploads" in quiet.skip_reason.skip_message

    dropbox.put("/Inbox/bob/new.jpg", jpeg(4))
    dropbox.remove("/Inbox/alice/a.jpg")  # a deletion carries no bytes: no run
    third, calls = _calls_during(dropbox, lambda: _tick(instance, library, quiet.cursor))
    assert calls == Counter({"files/list_folder/continue": 1})
    assert list(_runs(third)) == ["bob"] and not third.dynamic_partitions_requests

    # crash: the daemon never committed the third tick's cursor; evaluated again with the old one
    # the same upload is requested under the same run key (Dagster launches it once)
    again = _tick(instance, library, quiet.cursor)
    assert _runs(again) == _runs(third)

    # many changes page through the cursor: all of them in one tick, no full listing
    for i in range(5):
        dropbox.put(f"/Inbox/dave/{i}.jpg", jpeg(10 + i))
    fourth, calls = _calls_during(dropbox, lambda: _tick(instance, library, third.cursor))
    assert calls == Counter({"files/list_folder/continue": 3}) and list(_runs(fourth)) == ["dave"]

    # Dropbox resets the cursor: one full listing from a fresh cursor, then changes only again
    dropbox.reset_cursors()
    dropbox.put("/Inbox/erin/x.jpg", jpeg(20))
    reset, calls = _calls_during(dropbox, lambda: _tick(instance, library, fourth.cursor))
    assert calls["files/list_folder/continue"] >= 1 and calls["files/list_folder/get_latest_cursor"] == 1
    assert calls["files/list_folder"] >= 1 and "erin" in _runs(reset)
    after, calls = _calls_during(dropbox, lambda: _tick(instance, library, reset.cursor))
    assert calls == Counter({"files/list_folder/continue": 1}) and not after.run_requests


def test_dropbox_first_listing_over_several_ticks_then_changes(
    dropbox: DropboxStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOADS_LISTING_BUDGET_SECONDS", "0")  # one shard per tick
    dropbox.put("/Inbox/alice/a.jpg", jpeg(1))
    dropbox.put("/Inbox/bob/b.jpg", jpeg(2))
    library = _library(tmp_path, "dropbox:/Inbox")
    instance = dg.DagsterInstance.ephemeral()
    first, calls = _calls_during(dropbox, lambda: _tick(instance, library, None))
    assert calls["files/list_folder/get_latest_cursor"] == 1 and list(_runs(first)) == ["alice"]

    dropbox.put("/Inbox/alice/late.jpg", jpeg(3))  # alice is already listed: this comes as a change
    second, calls = _calls_during(dropbox, lambda: _tick(instance, library, first.cursor))
    assert "files/list_folder/continue" not in calls and "files/list_folder/get_latest_cursor" not in calls
    assert list(_runs(second)) == ["bob"]
    third, calls = _calls_during(dropbox, lambda: _tick(instance, library, second.cursor))
    assert calls == Counter({"files/list_folder/continue": 1}) and list(_runs(third)) == ["alice"]


# --- S3 event notifications in SQS --------------------------------------------------------------


def _sqs(endpoint: str):
    import boto3

    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def _proxy_counts(s3: S3Env) -> Counter[str]:
    """LIST requests and SQS calls by action, as the proxy in front of moto saw them."""
    out: Counter[str] = Counter()
    for seen in s3.proxy.seen:
        target = next((v for k, v in seen.headers.items() if k.lower() == "x-amz-target"), "")
        out[target.removeprefix("AmazonSQS.") if target else ("LIST" if seen.is_list else seen.method)] += 1
    return out


def _counted(s3: S3Env, tick) -> tuple[dg.SensorResult, Counter[str]]:
    s3.proxy.reset()
    result = tick()
    return result, _proxy_counts(s3)


@pytest.fixture
def bucket_with_queue(monkeypatch: pytest.MonkeyPatch) -> tuple[S3Env, str, str]:
    s3 = S3Env.shared()
    bucket = s3.new_bucket("events")
    client = s3.direct()
    client.put_object(Bucket=bucket, Key="u/alice/a.jpg", Body=jpeg(1))
    client.put_object(Bucket=bucket, Key="u/bob/b.jpg", Body=jpeg(2))
    queue_name = f"{bucket}-uploads"
    queue_url = _sqs(s3.upstream_url).create_queue(QueueName=queue_name)["QueueUrl"]
    # moto's server delivers S3 -> SQS notifications itself (and S3's s3:TestEvent on setup)
    client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}", "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "u/"}]}}}]})
    for name, value in (("SOURCE_S3_ENDPOINT_URL", s3.url), ("SOURCE_S3_REGION", REGION),
                        ("SOURCE_S3_ACCESS_KEY_ID", ACCESS_KEY), ("SOURCE_S3_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("UPLOADS_SOURCE", f"s3://{bucket}/u"), ("UPLOADS_QUEUE_URL", queue_url),
                        ("UPLOADS_QUEUE_ENDPOINT_URL", s3.url)):  # the proxy counts the queue's calls too
        monkeypatch.setenv(name, value)
    for name in ("IMAGE_SOURCES", "UPLOADS_RECONCILE_SECONDS", "UPLOADS_QUEUE_VISIBILITY_SECONDS",
                 "UPLOADS_LISTING_BUDGET_SECONDS", "UPLOADS_QUEUE_MAX_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    return s3, bucket, queue_url


def test_s3_notifications_replace_the_listing(bucket_with_queue: tuple[S3Env, str, str], tmp_path: Path) -> None:
    s3, bucket, queue_url = bucket_with_queue
    client, sqs = s3.direct(), _sqs(s3.upstream_url)
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()

    # first tick: one full listing for what already exists (it predates the notifications)
    first, counts = _counted(s3, lambda: _tick(instance, library, None))
    assert counts["LIST"] >= 1 and counts["ReceiveMessage"] >= 1
    assert sorted(_runs(first)) == ["alice", "bob"]
    instance.add_dynamic_partitions("image_shards", ["alice", "bob"])
    assert len(json.loads(first.cursor)["acks"]) == 1  # S3's s3:TestEvent, handled, deleted next tick

    quiet, counts = _counted(s3, lambda: _tick(instance, library, first.cursor))
    assert counts["LIST"] == 0 and counts["ReceiveMessage"] == 1 and counts["DeleteMessageBatch"] == 1
    assert not quiet.run_requests and "no new uploads" in quiet.skip_reason.skip_message

    client.put_object(Bucket=bucket, Key="u/bob/Straße 1.jpg", Body=jpeg(3))  # a notification from moto
    sqs.send_message(QueueUrl=queue_url, MessageBody="{not json")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}))
    outside = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-12-02T05:50:00.000Z",
               "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket},
                                                         "object": {"key": "archive/x.jpg", "size": 3, "eTag": "e"}}}
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [outside]}))  # not under u/: ignored
    third, counts = _counted(s3, lambda: _tick(instance, library, quiet.cursor))
    assert counts["LIST"] == 0 and counts["GET"] == 0 and counts["HEAD"] == 0
    assert list(_runs(third)) == ["bob"] and not third.dynamic_partitions_requests
    cursor = json.loads(third.cursor)
    assert len(cursor["acks"]) == 4 and cursor["problems"] == 2
    assert any("not JSON" in p for p in cursor["recent_problems"])

    # crash: the third tick's cursor was never committed. Its messages come back once their
    # visibility timeout ends (ended here at once) and the old cursor asks again: same run key
    for handle in cursor["acks"]:
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=0)
    again, counts = _counted(s3, lambda: _tick(instance, library, quiet.cursor))
    assert _runs(again) == _runs(third) and counts["LIST"] == 0

    # the tick after the committed cursor deletes them: the queue is empty, nothing is asked twice
    fourth, counts = _counted(s3, lambda: _tick(instance, library, again.cursor))
    assert counts["DeleteMessageBatch"] == 1 and not fourth.run_requests
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) == 0
    fifth, _ = _counted(s3, lambda: _tick(instance, library, fourth.cursor))
    assert not fifth.run_requests
    assert int(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"][
        "ApproximateNumberOfMessagesNotVisible"]) == 0


def test_a_lost_notification_is_caught_by_the_reconciliation_pass(
    bucket_with_queue: tuple[S3Env, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket, _ = bucket_with_queue
    client = s3.direct()
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    first = _tick(instance, library, None)
    instance.add_dynamic_partitions("image_shards", list(_runs(first)))

    client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    client.put_object(Bucket=bucket, Key="u/carol/lost.jpg", Body=jpeg(5))  # no notification for this one
    not_due, counts = _counted(s3, lambda: _tick(instance, library, first.cursor))
    assert counts["LIST"] == 0 and not not_due.run_requests  # the day has not passed yet

    monkeypatch.setenv("UPLOADS_RECONCILE_SECONDS", "3600")
    stale = json.loads(not_due.cursor)
    stale["reconciled_at"] = time.time() - 7200  # the last pass was two hours ago
    due, counts = _counted(s3, lambda: _tick(instance, library, json.dumps(stale)))
    assert counts["LIST"] >= 1 and "carol" in _runs(due)
    assert json.loads(due.cursor)["reconciled_at"] > stale["reconciled_at"]
    assert due.dynamic_partitions_requests[0].partition_keys == ["carol"]


def test_a_long_listing_goes_on_over_ticks_without_holding_up_the_queue(
    bucket_with_queue: tuple[S3Env, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full listing of 5M objects does not fit in a tick (60 s): the pass stops after its time
    budget (here: after every shard) and goes on from the next shard name next tick, while the
    queue's uploads still go out at once."""
    s3, bucket, _ = bucket_with_queue
    monkeypatch.setenv("UPLOADS_LISTING_BUDGET_SECONDS", "0")
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    first, counts = _counted(s3, lambda: _tick(instance, library, None))
    assert counts["LIST"] == 2 and list(_runs(first)) == ["alice"]  # the first level + one shard
    assert json.loads(first.cursor)["pass_after"] == "alice" and "reconciled_at" not in json.loads(first.cursor)

    s3.direct().put_object(Bucket=bucket, Key="u/alice/new.jpg", Body=jpeg(6))  # notified; alice is listed
    second, counts = _counted(s3, lambda: _tick(instance, library, first.cursor))
    assert counts["LIST"] == 2 and sorted(_runs(second)) == ["alice", "bob"]
    assert _runs(second)["alice"] != _runs(first)["alice"]
    cursor = json.loads(second.cursor)
    assert "pass_after" not in cursor and cursor["reconciled_at"] > 0 and cursor["since"] > 0

    third, counts = _counted(s3, lambda: _tick(instance, library, second.cursor))
    assert counts["LIST"] == 0 and not third.run_requests


def test_without_a_queue_the_bucket_is_listed_every_tick(
    bucket_with_queue: tuple[S3Env, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket, _ = bucket_with_queue
    monkeypatch.delenv("UPLOADS_QUEUE_URL")
    library = _library(tmp_path, f"s3://{bucket}/u")
    instance = dg.DagsterInstance.ephemeral()
    first, counts = _counted(s3, lambda: _tick(instance, library, None))
    assert counts["LIST"] >= 1 and counts["ReceiveMessage"] == 0 and sorted(_runs(first)) == ["alice", "bob"]
    second, counts = _counted(s3, lambda: _tick(instance, library, first.cursor))
    assert counts["LIST"] >= 1 and counts["ReceiveMessage"] == 0


# --- plain functions ----------------------------------------------------------------------------


def test_s3_event_parsing() -> None:
    from resources.upload_queue import MalformedEventError, parse_s3_event

    record = {"eventName": "ObjectCreated:Put", "eventTime": "2026-12-02T05:50:00.250Z",
              "s3": {"bucket": {"name": "b"}, "object": {"key": "u/bob/Stra%C3%9Fe+1.jpg", "size": 12, "eTag": "e1"}}}
    removed = {**record, "eventName": "ObjectRemoved:Delete"}
    created, problems = parse_s3_event(json.dumps({"Records": [record, removed, {"eventName": "ObjectCreated:Put"}]}))
    assert [(c.bucket, c.key, c.size, c.etag) for c in created] == [("b", "u/bob/Straße 1.jpg", 12, "e1")]
    assert created[0].event_time == pytest.approx(1796190600.25)
    assert len(problems) == 1 and "record 2" in problems[0]
    sns = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})
    assert [c.key for c in parse_s3_event(sns)[0]] == ["u/bob/Straße 1.jpg"]
    assert parse_s3_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == ([], [])
    for body in ("{", "[]", json.dumps({"Records": "x"})):
        with pytest.raises(MalformedEventError):
            parse_s3_event(body)


def test_shard_batch_counts_a_redelivered_entry_once() -> None:
    from assemblage_assets.images.uploads_feed import ShardBatch
    from resources.image_source import S3Source

    source = S3Source(bucket="b", prefix="u/")
    once, twice = ShardBatch([source], source), ShardBatch([source], source)
    once.add("s3://b/u/Ferien Sommer/x.jpg", "e1", 10.0)
    for _ in range(2):
        twice.add("s3://b/u/Ferien Sommer/x.jpg", "e1", 10.0)
    (shard,) = once.shards()
    assert shard.ref.key == shard_key("Ferien Sommer") and [s.run_key for s in twice.shards()] == [shard.run_key]
    once.add("s3://b/u/top.jpg", "e2", 11.0)
    assert [s.ref.key for s in once.shards()] == [shard.ref.key, "~top-level"]


def test_queue_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from resources.upload_queue import UploadQueue

    for name in ("UPLOADS_QUEUE_ENDPOINT_URL", "UPLOADS_QUEUE_REGION", "UPLOADS_QUEUE_MAX_MESSAGES",
                 "UPLOADS_QUEUE_ACCESS_KEY_ID", "UPLOADS_QUEUE_SECRET_ACCESS_KEY", "SOURCE_S3_REGION",
                 "UPLOADS_QUEUE_VISIBILITY_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("UPLOADS_QUEUE_URL", raising=False)
    assert UploadQueue.from_env() is None
    monkeypatch.setenv("UPLOADS_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads")
    monkeypatch.setenv("SOURCE_S3_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("SOURCE_S3_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("UPLOADS_QUEUE_MAX_MESSAGES", "5000")
    aws = UploadQueue.from_env()
    assert aws is not None and (aws.endpoint_url, aws.region_name, aws.max_messages) == (None, "eu-west-1", 500)
    assert aws.access_key_env == "SOURCE_S3_ACCESS_KEY_ID" and SECRET_KEY not in repr(aws)
    monkeypatch.setenv("UPLOADS_QUEUE_VISIBILITY_SECONDS", "30")
    assert aws.visibility_timeout == 600 and UploadQueue.from_env(min_visibility=180).visibility_timeout == 180
    monkeypatch.setenv("UPLOADS_QUEUE_URL", "http://127.0.0.1:9324/000000000000/uploads")  # e.g. ElasticMQ
    local = UploadQueue.from_env()
    assert local is not None and local.endpoint_url == "http://127.0.0.1:9324" and local.region_name is None

"""The queue of the uploads bucket's event notifications (``UPLOADS_QUEUE_URL``), read by the
uploads sensor instead of listing the bucket every tick: ``NotificationQueue``, the interface
the sensor uses, and its SQS implementation for S3 (Cloudflare R2's, a Cloudflare Queue read
over HTTP pull, is ``cloudflare_queue.py``).

Only what the sensor needs: a bounded, short-polled receive (no long poll: a tick never waits
for an empty queue), a batched delete, and the parser of S3's notification JSON (also wrapped
in an SNS envelope, the usual fan-out setup).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import unquote_plus, urlsplit

from assemblage_assets.core import settings
from resources.request_counts import RequestCounts

_BATCH = 10  # SQS's most messages per ReceiveMessage / entries per DeleteMessageBatch
_CONFIG_CODES = {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                 "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "ExpiredToken", "UnrecognizedClientException"}


class QueueError(Exception):
    """The queue cannot be read; ``config`` when a setting is wrong rather than the service down."""

    def __init__(self, message: str, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


class MalformedEventError(ValueError):
    """A message or record that is not an S3 event notification this consumer understands."""


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str


@dataclass(frozen=True)
class CreatedObject:
    """One ``ObjectCreated`` record: the object's bucket, key (decoded), size, ETag and time."""

    bucket: str
    key: str
    size: int
    etag: str
    event_time: float


def event_time(raw: Any) -> float:
    """An ISO 8601 notification time as a Unix time."""
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise MalformedEventError(f"eventTime {raw!r} is not an ISO 8601 time") from exc


def _record(record: Any) -> CreatedObject | None:
    if not isinstance(record, dict) or not isinstance(record.get("eventName"), str):
        raise MalformedEventError("a record without an eventName")
    if not record["eventName"].startswith("ObjectCreated:"):
        return None  # removals, restores, replication: nothing new to ingest
    try:
        s3 = record["s3"]
        obj = s3["object"]
        # keys arrive form-encoded (a space is "+"), as S3 documents for notifications
        return CreatedObject(str(s3["bucket"]["name"]), unquote_plus(str(obj["key"])), int(obj.get("size") or 0),
                             str(obj.get("eTag") or obj.get("sequencer") or ""), event_time(record.get("eventTime")))
    except MalformedEventError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEventError(f"an {record['eventName']} record with a bad or missing {exc}") from None


def parse_s3_event(body: str) -> tuple[list[CreatedObject], list[str]]:
    """The created objects of one message body and the problems of the records it could not
    read. A whole body that is not an S3 notification raises ``MalformedEventError``; S3's
    ``s3:TestEvent`` (sent when notifications are configured) is an empty, valid message."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedEventError(f"not JSON: {exc}") from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_s3_event(doc["Message"])  # S3 -> SNS -> SQS without raw message delivery
    if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        return [], []
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise MalformedEventError("no Records list: not an S3 event notification")
    created, problems = [], []
    for i, record in enumerate(records):
        try:
            if (obj := _record(record)) is not None:
                created.append(obj)
        except MalformedEventError as exc:
            problems.append(f"record {i}: {exc}")
    return created, problems


class NotificationQueue(Protocol):
    """What the uploads sensor needs of a notification queue: a bounded batch of messages, their
    acknowledgement by handle (by the next tick, once this one's runs are submitted), the
    provider's notification format, and the requests made."""

    @property
    def url(self) -> str: ...

    def receive(self) -> list[QueueMessage]: ...

    def acknowledge(self, handles: list[str]) -> list[str]:
        """Acknowledge (delete) these messages; the reasons of those that failed."""
        ...

    def parse(self, body: str) -> tuple[list[CreatedObject], list[str]]:
        """The created objects of one message body and its unreadable records' problems;
        ``MalformedEventError`` for a body that is no notification at all."""
        ...

    def request_counts(self) -> dict[str, int]: ...


def _region_of(url: str) -> str:
    """``https://sqs.eu-west-1.amazonaws.com/123/q`` (or the legacy
    ``eu-west-1.queue.amazonaws.com``) -> ``eu-west-1``; '' for other hosts."""
    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    if host.endswith(".queue.amazonaws.com") and len(parts) == 4:
        return parts[0]
    return parts[1] if len(parts) >= 4 and parts[0] == "sqs" and host.endswith(".amazonaws.com") else ""


MAX_VISIBILITY_SECONDS = 43200  # the longest visibility timeout of SQS and of Cloudflare Queues: 12 hours


@dataclass(kw_only=True)
class QueueClient:
    """What both notification queues keep: the receive bounds, a client built on first use,
    and the requests it made."""

    visibility_timeout: int = 600
    max_messages: int = 100
    _client: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counts: RequestCounts = field(default_factory=RequestCounts, repr=False)

    @staticmethod
    def bounds_from_env(min_visibility: int) -> dict[str, int]:
        """``UPLOADS_QUEUE_VISIBILITY_SECONDS``, at least ``min_visibility`` (a message must stay
        hidden until the next tick acknowledges it) and at most 12 hours; ``UPLOADS_QUEUE_MAX_MESSAGES``."""
        visibility = max(settings.env_int("UPLOADS_QUEUE_VISIBILITY_SECONDS", 600), min_visibility)
        return {"visibility_timeout": min(visibility, MAX_VISIBILITY_SECONDS),
                "max_messages": max(1, min(settings.env_int("UPLOADS_QUEUE_MAX_MESSAGES", 100), 500))}

    def request_counts(self) -> dict[str, int]:
        return self._counts.snapshot()


@dataclass
class UploadQueue(QueueClient):
    """An SQS queue of S3 event notifications. Secrets are read from the named variables when
    the client is built, never held here."""

    url: str
    endpoint_url: str | None = None
    region_name: str | None = None
    access_key_env: str = ""
    secret_key_env: str = ""

    @classmethod
    def from_env(cls, min_visibility: int = 0) -> UploadQueue | None:
        """The queue of ``UPLOADS_QUEUE_URL`` (None when unset): ``UPLOADS_QUEUE_*`` settings,
        credentials falling back to the bucket source's (``SOURCE_S3_*``), then boto3's chain.
        The visibility timeout is at least ``min_visibility`` (a message must stay hidden until
        the next tick deletes it) and at most SQS's 12 hours."""
        url = settings.env_str("UPLOADS_QUEUE_URL")
        if not url or url.startswith("cfqueue:"):  # a Cloudflare Queue: cloudflare_queue.py
            return None
        endpoint = settings.env_str("UPLOADS_QUEUE_ENDPOINT_URL")
        parts = urlsplit(url)
        if not endpoint and parts.hostname and not parts.hostname.endswith(".amazonaws.com"):
            endpoint = f"{parts.scheme}://{parts.netloc}"  # a self-hosted SQS (ElasticMQ, moto): its own host
        names = {}
        for field_name, own, fallback in (("access_key_env", "UPLOADS_QUEUE_ACCESS_KEY_ID", "SOURCE_S3_ACCESS_KEY_ID"),
                                          ("secret_key_env", "UPLOADS_QUEUE_SECRET_ACCESS_KEY", "SOURCE_S3_SECRET_ACCESS_KEY")):
            names[field_name] = next((n for n in (own, fallback) if settings.env_str(n)), "")
        return cls(
            url=url, endpoint_url=endpoint or None,
            region_name=settings.env_str("UPLOADS_QUEUE_REGION") or _region_of(url) or settings.env_str("SOURCE_S3_REGION")
            or None,
            **cls.bounds_from_env(min_visibility), **names,
        )

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                key = settings.env_str(self.access_key_env) if self.access_key_env else ""
                secret = settings.env_str(self.secret_key_env) if self.secret_key_env else ""
                if bool(key) != bool(secret):
                    raise QueueError("incomplete credentials for UPLOADS_QUEUE_URL: set both UPLOADS_QUEUE_ACCESS_KEY_ID "
                                     "and UPLOADS_QUEUE_SECRET_ACCESS_KEY", config=True)
                self._client = boto3.session.Session().client(
                    "sqs", endpoint_url=self.endpoint_url, region_name=self.region_name or "us-east-1",
                    aws_access_key_id=key or None, aws_secret_access_key=secret or None,
                    config=Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=10, read_timeout=20),
                )
                self._counts.count_boto3_calls(self._client, "sqs")
            return self._client

    def _error(self, exc: Exception, what: str) -> QueueError:
        response = getattr(exc, "response", None)
        code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
        if code in _CONFIG_CODES:
            return QueueError(f"{what} {self.url}: {code}: check UPLOADS_QUEUE_URL and its credentials", config=True)
        return QueueError(f"{what} {self.url}: {code or type(exc).__name__}")

    def receive(self, limit: int | None = None) -> list[QueueMessage]:
        """Up to ``limit`` (default ``max_messages``) messages, ten per short-polled call, stopping
        at the first empty answer; they stay invisible to others for ``visibility_timeout``."""
        limit = self.max_messages if limit is None else limit
        out: list[QueueMessage] = []
        while len(out) < limit:
            try:
                reply = self.client().receive_message(
                    QueueUrl=self.url, MaxNumberOfMessages=min(_BATCH, limit - len(out)), WaitTimeSeconds=0,
                    VisibilityTimeout=self.visibility_timeout,
                )
            except QueueError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified
                raise self._error(exc, "receive from") from None
            messages = reply.get("Messages", [])
            out.extend(QueueMessage(m["MessageId"], m["ReceiptHandle"], m.get("Body", "")) for m in messages)
            if not messages:
                break
        return out

    def parse(self, body: str) -> tuple[list[CreatedObject], list[str]]:
        return parse_s3_event(body)

    def acknowledge(self, receipt_handles: list[str]) -> list[str]:
        """Delete the messages of these receipt handles; the reasons of those that failed (an
        expired handle: the message comes back and is requested again, finding nothing new)."""
        failed: list[str] = []
        for start in range(0, len(receipt_handles), _BATCH):
            chunk = receipt_handles[start:start + _BATCH]
            try:
                reply = self.client().delete_message_batch(
                    QueueUrl=self.url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)])
            except QueueError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified
                raise self._error(exc, "delete from") from None
            failed.extend(f"{f.get('Code', '?')}: {f.get('Message', '')}".strip() for f in reply.get("Failed", []))
        return failed

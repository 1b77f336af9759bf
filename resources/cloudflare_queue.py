"""The Cloudflare Queue an R2 bucket's event notifications are delivered to, read over
Cloudflare Queues' HTTP pull API with the official ``cloudflare`` SDK
(``UPLOADS_QUEUE_URL=cfqueue://<account_id>/<queue_id>``): the R2 counterpart of the SQS
queue in ``upload_queue.py``, behind the same small interface (receive a bounded batch,
acknowledge by handle on the next tick, parse, request counts).

A pulled message is leased for the visibility timeout; its ``lease_id`` is the handle the next
tick acknowledges. Unacknowledged messages are delivered again once the lease ends (and
dropped by Queues after the consumer's ``max_retries``, so the reconciliation listing still
matters).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from assemblage_assets.core import settings
from resources.upload_queue import CreatedObject, MalformedEventError, QueueClient, QueueError, QueueMessage, event_time

SCHEME = "cfqueue"
_BATCH = 100  # Queues' largest batch_size per pull
# The actions of R2's event types (developers.cloudflare.com/r2/buckets/event-notifications/,
# "Event types"): object-create and object-delete. Only a created object has bytes to ingest.
CREATE_ACTIONS = frozenset({"PutObject", "CopyObject", "CompleteMultipartUpload"})
DELETE_ACTIONS = frozenset({"DeleteObject", "LifecycleDeletion"})


def decode_body(body: str | None, metadata: Any) -> str:
    """A pulled message's text. Queues base64-encodes ``json`` and ``bytes`` messages for a pull
    consumer and sends ``text`` as is (pull-consumers docs, "Content types"); the content type
    is in the message's ``CF-Content-Type`` metadata. Without it, a body that is JSON already is
    taken as is. What does not decode stays as it came: the parser records it as malformed."""
    raw = body or ""
    kind = metadata.get("CF-Content-Type") if isinstance(metadata, dict) else None
    if kind == "text":
        return raw
    if kind is None:
        try:
            json.loads(raw)
            return raw
        except ValueError:
            pass
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return raw


def parse_r2_event(body: str) -> tuple[list[CreatedObject], list[str]]:
    """The created object of one R2 event notification (none for a deletion or an action this
    consumer does not know), in the shape R2 documents under "Message format":
    ``{"account", "action", "bucket", "object": {"key", "size", "eTag"}, "eventTime",
    "copySource"?}``; ``size`` and ``eTag`` are absent on deletions. Keys arrive as stored (not
    form-encoded like S3's). Raises ``MalformedEventError`` for anything else."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedEventError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("action"), str):
        raise MalformedEventError("no action: not an R2 event notification")
    if doc["action"] not in CREATE_ACTIONS:
        return [], []
    try:
        obj = doc["object"]
        key = obj["key"]
        if not isinstance(key, str) or not key or not isinstance(doc["bucket"], str):
            raise TypeError("bucket or object.key")
        when = event_time(doc.get("eventTime"))
        return [CreatedObject(doc["bucket"], key, int(obj.get("size") or 0),
                              str(obj.get("eTag") or doc.get("eventTime")), when)], []
    except MalformedEventError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedEventError(f"a {doc['action']} notification with a bad or missing {exc}") from None


def parse_queue_url(url: str) -> tuple[str, str]:
    """``cfqueue://<account_id>/<queue_id>`` -> (account id, queue id)."""
    parts = urlsplit(url)
    queue_id = parts.path.strip("/")
    if parts.scheme != SCHEME or not parts.netloc or not queue_id or "/" in queue_id:
        raise QueueError(f"UPLOADS_QUEUE_URL {url!r}: expected {SCHEME}://<account_id>/<queue_id>", config=True)
    return parts.netloc, queue_id


@dataclass
class CloudflareQueue(QueueClient):
    """A Cloudflare Queue with an HTTP pull consumer. The API token is read from the named
    variable when the client is built, never held here."""

    account_id: str
    queue_id: str
    token_env: str = ""
    base_url: str | None = None

    @classmethod
    def from_env(cls, min_visibility: int = 0) -> CloudflareQueue | None:
        """The queue of a ``cfqueue://`` ``UPLOADS_QUEUE_URL`` (None otherwise): the token in
        ``UPLOADS_QUEUE_API_TOKEN``, else ``CLOUDFLARE_API_TOKEN``; the API at
        ``CLOUDFLARE_BASE_URL`` when set. The visibility timeout follows the SQS queue's rule:
        at least ``min_visibility``, at most 12 hours."""
        url = settings.env_str("UPLOADS_QUEUE_URL")
        if not url.startswith(f"{SCHEME}:"):
            return None
        account_id, queue_id = parse_queue_url(url)
        return cls(
            account_id=account_id, queue_id=queue_id,
            token_env=next((n for n in ("UPLOADS_QUEUE_API_TOKEN", "CLOUDFLARE_API_TOKEN") if settings.env_str(n)), ""),
            base_url=settings.env_str("CLOUDFLARE_BASE_URL") or None,
            **cls.bounds_from_env(min_visibility),
        )

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.account_id}/{self.queue_id}"

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from cloudflare import Cloudflare

                token = settings.env_str(self.token_env) if self.token_env else ""
                if not token:
                    raise QueueError("no API token for UPLOADS_QUEUE_URL: set UPLOADS_QUEUE_API_TOKEN (or "
                                     "CLOUDFLARE_API_TOKEN) to a token with Queues Edit", config=True)
                self._client = Cloudflare(api_token=token, base_url=self.base_url, max_retries=3, timeout=20.0)
            return self._client

    def _error(self, exc: Exception, what: str) -> QueueError:
        from cloudflare import AuthenticationError, NotFoundError, PermissionDeniedError

        status = getattr(exc, "status_code", None)
        if isinstance(exc, AuthenticationError | PermissionDeniedError | NotFoundError):
            return QueueError(f"{what} {self.url}: HTTP {status}: check UPLOADS_QUEUE_URL, HTTP pull on the queue "
                              "and the token's Queues permission", config=True)
        return QueueError(f"{what} {self.url}: {f'HTTP {status}' if status else type(exc).__name__}")

    def receive(self, limit: int | None = None) -> list[QueueMessage]:
        """Up to ``limit`` (default ``max_messages``) messages, leased for ``visibility_timeout``,
        pulled up to 100 at a time; a short batch means the queue had no more."""
        limit = self.max_messages if limit is None else limit
        out: list[QueueMessage] = []
        while len(out) < limit:
            size = min(_BATCH, limit - len(out))
            self._counts.add("pull")
            try:
                reply = self.client().queues.messages.pull(
                    self.queue_id, account_id=self.account_id, batch_size=size,
                    visibility_timeout_ms=self.visibility_timeout * 1000)
            except QueueError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified
                raise self._error(exc, "pull from") from None
            messages = (reply.messages if reply else None) or []
            out.extend(QueueMessage(m.id or "?", m.lease_id or "", decode_body(m.body, m.metadata)) for m in messages)
            if len(messages) < size:
                break
        return out

    def acknowledge(self, handles: list[str]) -> list[str]:
        """Acknowledge the messages of these lease ids (Queues accepts a late ack, per its docs);
        the warnings Queues answers for those it could not."""
        failed: list[str] = []
        handles = [h for h in handles if h]
        for start in range(0, len(handles), _BATCH):
            chunk = handles[start:start + _BATCH]
            self._counts.add("ack")
            try:
                reply = self.client().queues.messages.ack(
                    self.queue_id, account_id=self.account_id, acks=[{"lease_id": h} for h in chunk])
            except QueueError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified
                raise self._error(exc, "acknowledge in") from None
            failed.extend(f"{lease[:16]}...: {warning}" for lease, warning in ((reply.warnings if reply else None)
                                                                               or {}).items())
        return failed

    def parse(self, body: str) -> tuple[list[CreatedObject], list[str]]:
        return parse_r2_event(body)

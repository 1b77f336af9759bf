"""A loopback stand-in for Cloudflare Queues' HTTP pull consumer API on 127.0.0.1, for the
official ``cloudflare`` SDK (pointed at it by ``base_url``): ``POST
/accounts/{account}/queues/{queue}/messages/pull`` and ``.../messages/ack`` in Cloudflare's
``{"success", "errors", "messages", "result"}`` envelope, with Bearer-token auth.

Messages are leased like Queues leases them: a pull hands out up to ``batch_size`` visible
messages, each with a fresh ``lease_id``, hidden for ``visibility_timeout_ms``; an ack by lease
id deletes the message (a late ack is still accepted, as Queues documents); an unacked message
is visible again once its lease ends. ``expire_leases`` ends every lease now (the passage of
the visibility timeout, without waiting for it). ``send`` publishes a body the way a producer
does: ``json`` and ``bytes`` content types come out base64-encoded, ``text`` as is. Every
request is counted by route; every pull's visibility timeout is recorded.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from support.loopback_http import LoopbackServer


@dataclass
class _Message:
    id: str
    body: str
    content_type: str
    timestamp_ms: int
    attempts: int = 0
    lease: str = ""
    leased_until: float = 0.0


@dataclass
class QueuesStandIn:
    account_id: str = "0123456789abcdef0123456789abcdef"
    queue_id: str = "fedcba9876543210fedcba9876543210"
    token: str = "cf-test-token-never-logged-0123456789"
    calls: Counter[str] = field(default_factory=Counter)
    visibility_timeouts_ms: list[float] = field(default_factory=list)
    _messages: dict[str, _Message] = field(default_factory=dict)
    _leases: dict[str, str] = field(default_factory=dict)  # lease id -> message id
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, body: Any, content_type: str = "json") -> str:
        """Publish one message (``json``: any JSON value; ``text``/``bytes``: str/bytes)."""
        if content_type == "json":
            encoded = base64.b64encode(json.dumps(body).encode()).decode()
        elif content_type == "bytes":
            encoded = base64.b64encode(body).decode()
        else:
            encoded = body
        message = _Message(uuid.uuid4().hex, encoded, content_type, int(time.time() * 1000))
        with self._lock:
            self._messages[message.id] = message
        return message.id

    def expire_leases(self) -> None:
        with self._lock:
            for message in self._messages.values():
                message.leased_until = 0.0

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged, leased or not."""
        with self._lock:
            return len(self._messages)

    @property
    def leased(self) -> int:
        now = time.time()
        with self._lock:
            return sum(1 for m in self._messages.values() if m.leased_until > now)

    def pull(self, batch_size: int, visibility_timeout_ms: float) -> dict[str, Any]:
        now = time.time()
        out = []
        with self._lock:
            for message in self._messages.values():
                if len(out) >= batch_size:
                    break
                if message.leased_until > now:
                    continue
                message.attempts += 1
                message.lease = uuid.uuid4().hex + uuid.uuid4().hex  # opaque, long, like Queues' JWE lease ids
                message.leased_until = now + visibility_timeout_ms / 1000
                self._leases[message.lease] = message.id
                out.append({"id": message.id, "body": message.body, "timestamp_ms": message.timestamp_ms,
                            "attempts": message.attempts, "lease_id": message.lease,
                            "metadata": {"CF-sourceMessageSource": "r2", "CF-Content-Type": message.content_type}})
            return {"message_backlog_count": len(self._messages), "messages": out}

    def ack(self, acks: list[dict], retries: list[dict]) -> dict[str, Any]:
        acked, retried, warnings = 0, 0, {}
        with self._lock:
            for item in acks:
                message_id = self._leases.pop(str(item.get("lease_id")), None)
                if message_id is None or self._messages.pop(message_id, None) is None:
                    warnings[str(item.get("lease_id"))] = "unknown lease id"
                else:
                    acked += 1
            for item in retries:
                message_id = self._leases.pop(str(item.get("lease_id")), None)
                if message_id in self._messages:
                    self._messages[message_id].leased_until = time.time() + float(item.get("delay_seconds") or 0)
                    retried += 1
        return {"ackCount": acked, "retryCount": retried, "warnings": warnings}


class QueuesServer:
    """Serves a ``QueuesStandIn`` on 127.0.0.1 over HTTP; ``base_url`` is the SDK's base URL."""

    def __init__(self, stand_in: QueuesStandIn) -> None:
        self.stand_in = stand_in
        self._server = LoopbackServer(self._handle)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/client/v4"

    def __enter__(self) -> QueuesServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, result: Any, errors: list | None = None) -> None:
        body = json.dumps({"success": status < 400, "errors": errors or [], "messages": [], "result": result}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        q = self.stand_in
        length = int(handler.headers.get("Content-Length") or 0)
        doc = json.loads(handler.rfile.read(length) or b"{}")
        prefix = f"/client/v4/accounts/{q.account_id}/queues/{q.queue_id}/messages/"
        route = handler.path.removeprefix(prefix) if handler.path.startswith(prefix) else "?"
        q.calls[route] += 1
        if handler.headers.get("Authorization") != f"Bearer {q.token}":
            self._reply(handler, 403, None, [{"code": 10000, "message": "Authentication error"}])
        elif route == "pull" and not (0 < int(doc.get("batch_size") or 5) <= 100
                                      and 0 < float(doc.get("visibility_timeout_ms") or 30000) <= 43_200_000):
            self._reply(handler, 400, None, [{"code": 11004, "message": "batch_size 1-100, visibility timeout <= 12h"}])
        elif route == "pull":
            timeout = float(doc.get("visibility_timeout_ms") or 30000)
            q.visibility_timeouts_ms.append(timeout)
            self._reply(handler, 200, q.pull(int(doc.get("batch_size") or 5), timeout))
        elif route == "ack":
            self._reply(handler, 200, q.ack(list(doc.get("acks") or []), list(doc.get("retries") or [])))
        else:
            self._reply(handler, 404, None, [{"code": 11000, "message": "No such queue or route"}])

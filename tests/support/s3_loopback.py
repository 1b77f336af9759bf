"""A real S3 endpoint on 127.0.0.1 for tests and benchmarks: moto's standalone server behind a
small reverse proxy that counts every request and can inject faults or latency.

Nothing here patches boto3: clients talk HTTP to the proxy, the proxy talks HTTP to moto.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from resources.object_store import S3ObjectStore

ACCESS_KEY = "AKIATESTASSEMBLAGE01"  # moto accepts any key until auth is switched on
SECRET_KEY = "test-secret-never-logged-0123456789abcd"
REGION = "us-east-1"

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    method: str
    path: str  # unquoted, without the query
    query: str
    headers: dict[str, str]
    status: int  # 0: no response (reset or stalled)

    @property
    def is_list(self) -> bool:
        return self.method == "GET" and "list-type=2" in self.query

    @property
    def is_object_put(self) -> bool:
        """A request that writes object bytes (PutObject or UploadPart)."""
        return self.method == "PUT" and self.path.count("/") >= 2


Fault = Callable[["Seen"], "str | None"]  # -> None, "503", "500", "403", "reset" or "stall"


class LoopbackProxy:
    """Counting, fault-injecting reverse proxy on 127.0.0.1 in front of one upstream server."""

    def __init__(self, upstream: tuple[str, int], latency: float = 0.0) -> None:
        self.upstream = upstream
        self.latency = latency
        self.fault: Fault | None = None
        self.seen: list[Seen] = []
        self.release = threading.Event()  # lets stalled requests go (they then get no response)
        self.stalled = threading.Semaphore(0)  # released once per stalled request
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
        self.fault = None
        self.release.clear()

    # Counting -----------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        """Requests by kind: PUT, HEAD, LIST, GET, POST, DELETE."""
        with self._lock:
            return Counter("LIST" if s.is_list else s.method for s in self.seen)

    def stored_puts(self) -> Counter[str]:
        """Successful object PUTs per path (an object stored twice shows a count of 2)."""
        with self._lock:
            return Counter(s.path for s in self.seen if s.is_object_put and s.status == 200 and "uploadId=" not in s.query)

    # Proxying -----------------------------------------------------------------------------

    def _upstream(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.upstream, timeout=60)
            self._local.conn = conn
        return conn

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        parts = urlsplit(h.path)
        headers = {k: v for k, v in h.headers.items()}
        seen = Seen(h.command, unquote(parts.path), parts.query, headers, 0)
        action = self.fault(seen) if self.fault else None
        if action == "reset":
            self._record(seen)
            _reset(h)
            return
        if action == "stall":
            self._record(seen)
            self.stalled.release()
            self.release.wait(120)
            _reset(h)
            return
        if action == "403":
            payload = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>injected</Message></Error>"
            self._record(Seen(seen.method, seen.path, seen.query, headers, 403))
            _respond(h, 403, [("Content-Type", "application/xml")], payload)
            return
        if action in ("500", "503"):
            code = "SlowDown" if action == "503" else "InternalError"
            payload = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            self._record(Seen(seen.method, seen.path, seen.query, headers, int(action)))
            _respond(h, int(action), [("Content-Type", "application/xml")], payload)
            return
        if self.latency:
            time.sleep(self.latency)
        forward = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or h.command in ("PUT", "POST"):
            forward["Content-Length"] = str(len(body))
        for attempt in range(2):
            conn = self._upstream()
            try:
                conn.request(h.command, h.path, body=body, headers=forward)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        self._record(Seen(seen.method, seen.path, seen.query, headers, resp.status))
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        _respond(h, resp.status, out, data, head=h.command == "HEAD")

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _respond(h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], body: bytes, head: bool = False) -> None:
    h.send_response_only(status)
    has_length = False
    for key, value in headers:
        if key.lower() == "content-length":
            if not head:
                continue
            has_length = True
        h.send_header(key, value)
    if not head:
        h.send_header("Content-Length", str(len(body)))
    elif not has_length:
        h.send_header("Content-Length", "0")
    h.end_headers()
    if not head:
        h.wfile.write(body)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Drop the connection with a TCP RST, as a crashed server or a middlebox would."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass


@contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's standalone S3 server on a free 127.0.0.1 port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


def _start_moto() -> tuple[str, int]:
    """A moto server for the rest of the process (a daemon thread)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server.get_host_and_port()


def set_moto_auth(endpoint: str, enabled: bool) -> None:
    """Switch moto's IAM authentication on (every key must be a known IAM key) or off."""
    host, port = urlsplit(endpoint).hostname, urlsplit(endpoint).port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/moto-api/reset-auth", body=b"0" if enabled else b"inf")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"moto reset-auth failed: HTTP {resp.status}")


def make_bucket(endpoint: str, *names: str) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )
    for name in names:
        client.create_bucket(Bucket=name)


class S3Env:
    """One moto server + proxy per test process; each test gets fresh buckets and counters."""

    _instance: S3Env | None = None

    def __init__(self) -> None:
        import atexit

        self._moto = _start_moto()
        self.upstream_url = f"http://{self._moto[0]}:{self._moto[1]}"
        self.proxy = LoopbackProxy(self._moto).start()
        self._buckets = 0
        atexit.register(self.proxy.stop)

    @classmethod
    def shared(cls) -> S3Env:
        if cls._instance is None:
            cls._instance = cls()
        cls._instance.proxy.reset()
        return cls._instance

    @property
    def url(self) -> str:
        """What the code under test talks to: the proxy."""
        return self.proxy.url

    def new_bucket(self, stem: str = "b") -> str:
        self._buckets += 1
        name = f"{stem}-{self._buckets}-{int(time.time() * 1000) % 100000}"
        make_bucket(self.upstream_url, name)
        return name

    def store(self, bucket: str, **fields: Any) -> S3ObjectStore:
        """An ``S3ObjectStore`` on ``bucket`` through the proxy; ``fields`` override its settings."""
        from resources.object_store import S3ObjectStore

        defaults = {
            "endpoint_url": self.url, "region_name": REGION, "addressing_style": "path",
            "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
        }
        return S3ObjectStore(bucket=bucket, **{**defaults, **fields})

    def direct(self) -> Any:
        """A client straight to moto, for assertions that must not show up in the proxy counts."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.upstream_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )

    def keys(self, bucket: str) -> dict[str, int]:
        client = self.direct()
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out


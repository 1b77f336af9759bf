"""A loopback HTTPS stand-in for the Dropbox API routes the image source calls, for the
official ``dropbox`` SDK: ``files/list_folder`` (+ ``/continue`` cursors), ``files/download``,
``files/get_metadata`` and ``oauth2/token``. The change feed too: ``get_latest_cursor``, and a
continue on a finished listing's cursor answers only the changes since (a log of ``put`` and
``remove``); cursors can be continued again, like Dropbox's, until ``reset_cursors``. Its
certificate comes from a ``trustme`` test CA whose PEM the SDK is given (``ca_certs``); the SDK
is pointed at it by host (``api_host``).

Faults: ``rate_limit`` (route -> how many 429s with ``Retry-After`` to answer first),
``truncate`` (paths whose download body is cut short), ``delete_on_download`` (paths that
vanish between listing and download). Every request is counted by route.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from support.loopback_http import LoopbackServer

_BLOCK = 4 * 1024 * 1024


def dropbox_content_hash(data: bytes) -> str:
    blocks = b"".join(hashlib.sha256(data[i:i + _BLOCK]).digest() for i in range(0, len(data), _BLOCK))
    return hashlib.sha256(blocks).hexdigest()


@dataclass
class DropboxStandIn:
    """Files by display path (``/Photos/2023/a.jpg``); folders are implied by the paths."""

    token: str = "sl.test-token-never-logged-0123456789"
    files: dict[str, bytes] = field(default_factory=dict)
    modified: dict[str, datetime] = field(default_factory=dict)
    rate_limit: Counter[str] = field(default_factory=Counter)
    retry_after: int = 1
    truncate: set[str] = field(default_factory=set)
    delete_on_download: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    refresh_token: str = "refresh-token-never-logged"
    _cursors: dict[str, dict] = field(default_factory=dict)
    _changes: list[str] = field(default_factory=list)  # path per change, in order: the change log
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.modified[path] = datetime.now(UTC).replace(microsecond=0)
        self._changes.append(path)

    def remove(self, path: str) -> None:
        self.files.pop(path, None)
        self.modified.pop(path, None)
        self._changes.append(path)

    def reset_cursors(self) -> None:
        """Every cursor handed out so far answers ``reset`` from now on."""
        with self._lock:
            self._cursors.clear()

    # --- metadata ---------------------------------------------------------------------------

    def _file_meta(self, path: str) -> dict:
        data = self.files[path]
        stamp = self.modified[path].strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            ".tag": "file", "name": path.rsplit("/", 1)[-1], "id": "id:" + hashlib.sha1(path.encode()).hexdigest()[:16],
            "client_modified": stamp, "server_modified": stamp, "rev": hashlib.sha1(data).hexdigest()[:12],
            "size": len(data), "path_lower": path.lower(), "path_display": path,
            "content_hash": dropbox_content_hash(data),
        }

    def _listing(self, folder: str, recursive: bool) -> list[dict] | None:
        prefix = folder.rstrip("/") + "/"
        below = [p for p in sorted(self.files) if p.lower().startswith(prefix.lower())]
        if not below and folder not in ("", "/"):
            return None
        entries, folders = [], set()
        for path in below:
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                sub = prefix + "/".join(parts[:depth])
                if sub not in folders and (recursive or depth == 1):
                    folders.add(sub)
                    entries.append({".tag": "folder", "name": parts[depth - 1], "id": "id:f" + hashlib.sha1(sub.encode()).hexdigest()[:12],
                                    "path_lower": sub.lower(), "path_display": sub})
            if recursive or len(parts) == 1:
                entries.append(self._file_meta(path))
        return entries

    # --- routes -----------------------------------------------------------------------------

    def route(self, name: str, arg: dict, auth: str) -> tuple[int, dict, dict | bytes]:
        """(status, extra headers, JSON body or download bytes)."""
        with self._lock:
            self.calls[name] += 1
            if self.rate_limit[name] > 0:
                self.rate_limit[name] -= 1
                return 429, {"Retry-After": str(self.retry_after), "Content-Type": "text/plain"}, b"too_many_requests"
        if name == "oauth2/token":
            if arg.get("refresh_token") != [self.refresh_token]:
                return 400, {}, {"error": "invalid_grant", "error_description": "refresh token is invalid"}
            return 200, {}, {"access_token": self.token, "expires_in": 14400, "token_type": "bearer"}
        if auth != f"Bearer {self.token}":
            return 401, {}, {"error_summary": "invalid_access_token/", "error": {".tag": "invalid_access_token"}}
        if name in ("files/list_folder", "files/list_folder/continue", "files/list_folder/get_latest_cursor"):
            return self._list(name, arg)
        path = arg.get("path", "")
        if name == "files/download" and path in self.delete_on_download:
            self.remove(path)
        if path not in self.files:
            return 409, {}, {"error_summary": "path/not_found/", "error": {".tag": "path", "path": {".tag": "not_found"}}}
        if name == "files/get_metadata":
            return 200, {}, self._file_meta(path)
        return 200, {"Dropbox-API-Result": json.dumps(self._file_meta(path))}, self.files[path]

    def _changed_since(self, folder: str, recursive: bool, seq: int) -> list[dict]:
        """The latest state of every path under ``folder`` changed after change number ``seq``."""
        prefix = folder.rstrip("/").lower() + "/"
        paths = list(dict.fromkeys(p for p in self._changes[seq:] if p.lower().startswith(prefix)
                                   and (recursive or "/" not in p[len(prefix):])))
        return [self._file_meta(p) if p in self.files else
                {".tag": "deleted", "name": p.rsplit("/", 1)[-1], "path_lower": p.lower(), "path_display": p}
                for p in paths]

    def _list(self, name: str, arg: dict) -> tuple[int, dict, dict]:
        with self._lock:
            seq = len(self._changes)
            if name in ("files/list_folder", "files/list_folder/get_latest_cursor"):
                folder, recursive = arg.get("path", ""), bool(arg.get("recursive"))
                entries = self._listing(folder, recursive)
                if entries is None:
                    return 409, {}, {"error_summary": "path/not_found/", "error": {".tag": "path", "path": {".tag": "not_found"}}}
                state = {"folder": folder, "recursive": recursive, "limit": int(arg.get("limit") or 2000)}
                if name.endswith("get_latest_cursor"):
                    cursor = uuid.uuid4().hex
                    self._cursors[cursor] = {**state, "rest": [], "seq": seq}
                    return 200, {}, {"cursor": cursor}
            else:
                state = self._cursors.get(arg["cursor"])  # kept: a cursor can be continued again
                if state is None:
                    return 409, {}, {"error_summary": "reset/", "error": {".tag": "reset"}}
                entries = state["rest"] or self._changed_since(state["folder"], state["recursive"], state["seq"])
                seq = state["seq"] if state["rest"] else seq
            limit = state["limit"]
            page, rest = entries[:limit], entries[limit:]
            cursor = uuid.uuid4().hex
            self._cursors[cursor] = {**state, "rest": rest, "seq": seq}
            return 200, {}, {"entries": page, "cursor": cursor, "has_more": bool(rest)}


class DropboxServer:
    """``DropboxStandIn`` over HTTPS on 127.0.0.1 with a trustme certificate."""

    def __init__(self, stand_in: DropboxStandIn, ca_pem: Path) -> None:
        import trustme

        self.stand_in = stand_in
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(ca_pem))
        self.ca_pem = ca_pem
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self._server = LoopbackServer(self._handle, tls=context)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    def __enter__(self) -> DropboxServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs

        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        name = h.path.removeprefix("/2/").lstrip("/")
        if name == "oauth2/token":
            arg: dict = parse_qs(body.decode())
        elif "Dropbox-API-Arg" in h.headers:
            arg = json.loads(h.headers["Dropbox-API-Arg"])
        else:
            arg = json.loads(body or b"{}")
        status, headers, payload = self.stand_in.route(name, arg, h.headers.get("Authorization", ""))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        if not isinstance(payload, bytes):
            h.send_header("Content-Type", "application/json")
        elif "Content-Type" not in headers:
            h.send_header("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            h.send_header(key, value)
        truncated = name == "files/download" and status == 200 and arg.get("path") in self.stand_in.truncate
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2] if truncated else data)
        if truncated:
            h.close_connection = True

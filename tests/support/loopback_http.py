"""A threaded HTTP(S) server on 127.0.0.1 (a free port) whose requests all go to one function:
the transport the loopback stand-ins of remote services share."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")


class LoopbackServer:
    """Serves ``handle(request_handler)`` for every request while entered; ``tls`` wraps the
    socket (a stand-in the client reaches over HTTPS)."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None], *, tls: ssl.SSLContext | None = None) -> None:
        def dispatch(self: BaseHTTPRequestHandler) -> None:
            handle(self)

        handler = type("Handler", (BaseHTTPRequestHandler,), {
            "protocol_version": "HTTP/1.1",
            "log_message": lambda self, *args: None,
            **{f"do_{method}": dispatch for method in METHODS},
        })
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

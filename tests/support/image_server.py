"""A local HTTP server on 127.0.0.1 serving real images and every way a listing URL goes wrong.

Routes:
  /img/{n}.jpg, /img/{n}.png   a distinct real image per n (640x480)
  /status/{code}               that status (404, 500, ...)
  /slow/{seconds}              the image after a delay (timeouts)
  /polite/{n}.jpg              the image after 0.15 s, counting requests in flight (per-host limit)
  /html-as-image.jpg           an HTML page served as image/jpeg
  /truncated.jpg               a JPEG cut in half (header fine, pixels missing)
  /huge-declared.jpg           Content-Length far above any cap
  /huge-streamed.jpg           no Content-Length, streams until the client gives up
  /loop/a, /loop/b             redirect to each other
  /chain/{n}                   n redirects, then an image
  /redirect?to=URL             302 to URL
"""

from __future__ import annotations

import io
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def make_jpeg(n: int, size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> bytes:
    """A distinct image per ``n``: its colour and a stripe pattern depend on it."""
    img = Image.new("RGB", size, ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256))
    for x in range(0, size[0], 8 + n % 16):
        img.paste((255 - (n * 37) % 256, 120, 30), (x, 0, x + 3, size[1]))
    buf = io.BytesIO()
    img.save(buf, fmt, quality=85) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


class ImageServer:
    """``with ImageServer() as server: server.url("/img/1.jpg")``; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._images: dict[tuple[int, str], bytes] = {}
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Host", "")))
                try:
                    server._route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self.requests]

    def image(self, n: int, fmt: str = "JPEG") -> bytes:
        with self._lock:
            if (n, fmt) not in self._images:
                self._images[(n, fmt)] = make_jpeg(n, fmt=fmt)
            return self._images[(n, fmt)]

    # --- routes ----------------------------------------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, **headers: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(body)

    def _redirect(self, h: BaseHTTPRequestHandler, location: str) -> None:
        self._send(h, 302, b"", "text/plain", Location=location)

    def _route(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        if m := re.fullmatch(r"/img/(\d+)\.(jpg|png)", path):
            fmt = "PNG" if m.group(2) == "png" else "JPEG"
            self._send(h, 200, self.image(int(m.group(1)), fmt), f"image/{m.group(2).replace('jpg', 'jpeg')}")
        elif m := re.fullmatch(r"/status/(\d+)", path):
            self._send(h, int(m.group(1)), b"nope", "text/plain")
        elif m := re.fullmatch(r"/slow/([\d.]+)", path):
            self.closing.wait(float(m.group(1)))
            if not self.closing.is_set():
                self._send(h, 200, self.image(0), "image/jpeg")
        elif m := re.fullmatch(r"/polite/(\d+)\.jpg", path):
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                time.sleep(0.15)
                self._send(h, 200, self.image(int(m.group(1))), "image/jpeg")
            finally:
                with self._lock:
                    self._in_flight -= 1
        elif path == "/html-as-image.jpg":
            self._send(h, 200, b"<!doctype html><html><body>Not found</body></html>", "image/jpeg")
        elif path == "/truncated.jpg":
            data = self.image(7)
            self._send(h, 200, data[: len(data) // 2], "image/jpeg")
        elif path == "/huge-declared.jpg":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(500 * 1024 * 1024))
            h.end_headers()
            h.wfile.write(self.image(0)[:1024])
        elif path == "/huge-streamed.jpg":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            h.wfile.write(self.image(0)[:1024])
            chunk = b"\0" * 16384
            for _ in range(2048):  # 32 MB at most; the client hangs up long before
                if self.closing.is_set():
                    break
                h.wfile.write(chunk)
        elif m := re.fullmatch(r"/loop/([ab])", path):
            self._redirect(h, "/loop/b" if m.group(1) == "a" else "/loop/a")
        elif m := re.fullmatch(r"/chain/(\d+)", path):
            n = int(m.group(1))
            if n == 0:
                self._send(h, 200, self.image(0), "image/jpeg")
            else:
                self._redirect(h, f"/chain/{n - 1}")
        elif path == "/redirect":
            self._redirect(h, parse_qs(parts.query)["to"][0])
        else:
            self._send(h, 404, b"unknown route", "text/plain")

"""Download images from untrusted URLs (scraped listings) without letting them reach inside.

- SSRF guard: every host is resolved and *every* address it resolves to must be public
  (loopback, private, link-local, multicast, reserved, ... are refused) unless allow-listed
  with ``FETCH_ALLOW_HOSTS`` (hosts or CIDRs). Only http and https, no credentials in URLs.
- The check happens where the socket is opened: a network backend resolves, vets and connects
  to the vetted IP itself, so DNS rebinding between check and connect is impossible, and every
  connection this client makes (each redirect hop included) passes the same gate. TLS still
  verifies the certificate against the URL's host name (SNI), and the Host header is unchanged.
- Redirects are followed by hand (limit, loop detection, scheme re-checked on every hop).
- Connect/read timeouts plus a total deadline; the body is streamed and abandoned past
  ``max_bytes``; it must start with an accepted image signature and open in Pillow.
- Politeness: at most ``per_host`` requests in flight per host, whatever the worker count.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from PIL import Image

from assemblage_assets.core import settings
from assemblage_assets.core.imaging import APPROVED_FORMATS, prepare_decoder, sniff_format
from resources.image_fetch.guard import (
    AddressGuard,
    AllowList,
    FetchError,
    Resolver,
    VettedTransport,
    bare_host,
    system_resolver,
)

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
USER_AGENT = "assemblage-image-backfill/0.1"


# --- politeness ----------------------------------------------------------------------------------


class HostLimiter:
    """At most ``per_host`` requests in flight per host name."""

    def __init__(self, per_host: int) -> None:
        self._per_host = max(1, per_host)
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            semaphore = self._slots.setdefault(bare_host(host), threading.BoundedSemaphore(self._per_host))
        with semaphore:
            yield


# --- the fetcher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchSettings:
    """Limits of one download; defaults are the production values (see README for the env vars)."""

    allow_hosts: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0  # a server trickling one byte per read timeout is cut here
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 5
    per_host: int = 2
    workers: int = 4
    max_pixels: int = settings.DEFAULT_MAX_IMAGE_PIXELS
    user_agent: str = USER_AGENT

    @classmethod
    def from_env(cls) -> FetchSettings:
        default = cls()
        return cls(
            allow_hosts=settings.env_str("FETCH_ALLOW_HOSTS"),
            connect_timeout=settings.env_float("FETCH_CONNECT_TIMEOUT", default.connect_timeout),
            read_timeout=settings.env_float("FETCH_READ_TIMEOUT", default.read_timeout),
            total_timeout=settings.env_float("FETCH_TOTAL_TIMEOUT", default.total_timeout),
            max_bytes=settings.env_int("FETCH_MAX_BYTES", default.max_bytes),
            max_redirects=settings.env_int("FETCH_MAX_REDIRECTS", default.max_redirects),
            per_host=settings.env_int("FETCH_PER_HOST_CONCURRENCY", default.per_host),
            workers=settings.env_int("FETCH_WORKERS", default.workers),
            max_pixels=settings.env_int("MAX_IMAGE_PIXELS", default.max_pixels),
            user_agent=settings.env_str("FETCH_USER_AGENT", default.user_agent),
        )


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded body that is an accepted, readable image."""

    url: str  # as requested
    final_url: str  # after redirects
    body: bytes
    format: str  # Pillow's name: JPEG, PNG, WEBP, TIFF
    ext: str  # jpg, png, webp, tiff
    width: int
    height: int
    sha256: str
    content_type: str  # as the server claimed it (not trusted)

    @property
    def size(self) -> int:
        return len(self.body)


def validate_image(body: bytes, max_pixels: int, claimed_type: str = "") -> tuple[str, str, int, int]:
    """(format, ext, width, height) of ``body``, judged by its magic bytes and Pillow, never by
    the Content-Type. Raises ``FetchError`` (not-an-image, unsupported-format, too-many-pixels, corrupt)."""
    detected = sniff_format(body[:32])
    if detected is None:
        claimed = f" (served as {claimed_type})" if claimed_type else ""
        raise FetchError("not-an-image", f"the body is not an image{claimed}: starts with {body[:12]!r}")
    if detected not in APPROVED_FORMATS:
        raise FetchError("unsupported-format", f"{detected} images are not accepted")
    pillow_formats, ext = APPROVED_FORMATS[detected]
    prepare_decoder(detected)
    try:
        with Image.open(io.BytesIO(body), formats=pillow_formats) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise FetchError("too-many-pixels", f"{width}x{height} exceeds {max_pixels} pixels")
            img.verify()
    except Image.DecompressionBombError as exc:
        raise FetchError("too-many-pixels", str(exc)) from None
    except (OSError, SyntaxError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise FetchError("corrupt", f"Pillow cannot read the {detected} image: {exc}") from None
    return detected, ext, width, height


def check_url(url: str | httpx.URL) -> httpx.URL:
    """The parsed URL if its form may be fetched (http/https, a host, no credentials)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError("invalid-url", f"not a URL: {url!r}: {exc}") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise FetchError("refused-scheme", f"only http and https are fetched, not {parsed.scheme or 'no scheme'!r}")
    if not parsed.host:
        raise FetchError("invalid-url", f"no host in {url!r}")
    if parsed.userinfo:
        raise FetchError("invalid-url", "URLs with credentials are not fetched")
    return parsed


class ImageFetcher:
    """Safe downloads of image URLs; thread-safe, one per run (``with ImageFetcher(...) as f``)."""

    def __init__(self, config: FetchSettings | None = None, *, resolver: Resolver = system_resolver) -> None:
        self.config = config or FetchSettings()
        self.guard = AddressGuard(AllowList.parse(self.config.allow_hosts), resolver)
        self._hosts = HostLimiter(self.config.per_host)
        self._client = httpx.Client(
            transport=VettedTransport(self.guard, max_connections=max(self.config.workers, 1) * 2),
            timeout=httpx.Timeout(
                connect=self.config.connect_timeout,
                read=self.config.read_timeout,
                write=self.config.read_timeout,
                pool=self.config.total_timeout,
            ),
            follow_redirects=False,
            trust_env=False,
            headers={
                "User-Agent": self.config.user_agent,
                "Accept": "image/webp,image/png,image/jpeg,image/*;q=0.8",
                "Accept-Encoding": "identity",  # images are compressed already
            },
        )

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str) -> FetchedImage:
        """Download ``url`` and validate the body; raises ``FetchError`` with the reason."""
        current = check_url(url)
        deadline = time.monotonic() + self.config.total_timeout
        seen = {str(current)}
        for _ in range(self.config.max_redirects + 1):
            with self._hosts.slot(current.host):
                result = self._get(current, deadline)
            if isinstance(result, httpx.URL):
                current = check_url(result)
                if str(current) in seen:
                    raise FetchError("redirect-loop", f"redirect loop back to {current}")
                seen.add(str(current))
                continue
            body, claimed_type = result
            fmt, ext, width, height = validate_image(body, self.config.max_pixels, claimed_type)
            return FetchedImage(
                url=url,
                final_url=str(current),
                body=body,
                format=fmt,
                ext=ext,
                width=width,
                height=height,
                sha256=hashlib.sha256(body).hexdigest(),
                content_type=claimed_type,
            )
        raise FetchError("too-many-redirects", f"more than {self.config.max_redirects} redirects")

    def _get(self, url: httpx.URL, deadline: float) -> httpx.URL | tuple[bytes, str]:
        """One request: the redirect target, or (body, claimed content type) of a 200."""
        try:
            with self._client.stream("GET", url) as response:
                status = response.status_code
                if status in REDIRECT_STATUSES and "location" in response.headers:
                    # httpx has already rejected an unparsable Location (RemoteProtocolError).
                    return url.join(response.headers["location"])
                if status != 200:
                    raise FetchError("http-error", f"HTTP {status} {response.reason_phrase}".strip())
                return self._read_capped(response, deadline), response.headers.get("content-type", "")
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", f"{type(exc).__name__} from {url.host}: {exc}") from None
        except httpx.HTTPError as exc:
            kinds = ((httpx.ConnectError, "connect-error"), (httpx.ProtocolError, "protocol-error"))
            kind = next((k for cls, k in kinds if isinstance(exc, cls)), "network-error")
            raise FetchError(kind, f"{type(exc).__name__} from {url.host}: {exc}") from None

    def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        limit = self.config.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError("too-large", f"Content-Length {declared} exceeds the {limit}-byte limit")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise FetchError("too-large", f"body exceeds the {limit}-byte limit; download aborted")
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"download not finished within {self.config.total_timeout:g}s")
        return bytes(body)

    def fetch_many(self, urls: Sequence[str]) -> Iterator[tuple[int, FetchedImage | FetchError]]:
        """(index, image or error) for each URL, as downloads finish; at most ``workers`` bodies
        are held at once (the next download starts only when the caller took a result)."""
        workers = max(1, self.config.workers)

        def attempt(url: str) -> FetchedImage | FetchError:
            try:
                return self.fetch(url)
            except FetchError as exc:
                return exc
            except Exception as exc:  # noqa: BLE001 - one odd URL from scraped data must not stop the run
                return FetchError("unexpected-error", f"{type(exc).__name__}: {exc}")

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            todo = iter(enumerate(urls))
            running: dict[Future[FetchedImage | FetchError], int] = {}
            while True:
                while len(running) < workers and (item := next(todo, None)) is not None:
                    running[pool.submit(attempt, item[1])] = item[0]
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()

"""Where ``/media/{id}/{kind}`` finds a thumbnail or preview, from the catalogue's row only (never
a path from the request): the public URL it was published under (``IMAGE_BASE_URL``); once
published to a bucket, a short-lived presigned URL of its object; once published to the local
object store, that file; before publishing, the derivative cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assemblage_assets.serve.config import ServeConfig
from resources.object_store import ObjectStore, ObjectStoreError, content_type_for

log = logging.getLogger("assemblage.serve")
FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"  # derivative keys never change content
REUSE_FRACTION = 0.5  # a signed URL is handed out again for half its life: browsers can cache it
MAX_SIGNED = 4096  # signed URLs kept for reuse (a few pages of thumbnails)


@dataclass(frozen=True)
class Redirect:
    url: str
    cache_control: str | None = None


@dataclass(frozen=True)
class LocalFile:
    path: Path
    media_type: str
    cache_control: str = FILE_CACHE_CONTROL


class MediaUnavailable(RuntimeError):
    """Published to a bucket that cannot be signed for (credentials), and no cached copy."""


class MediaLocator:
    """One per app. Presigned URLs are signed locally (no request to the bucket) and reused for
    ``REUSE_FRACTION`` of their lifetime, so a page shown twice asks the browser for the same
    URL and its cache answers."""

    def __init__(self, config: ServeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._signed: dict[str, tuple[str, float]] = {}  # object key -> (URL, signed at)
        self._lock = threading.Lock()

    def locate(self, row: dict[str, Any], kind: str) -> Redirect | LocalFile | None:
        """``row``: ``queries.media`` of one image; ``kind``: thumbnail or preview."""
        url = row[f"{kind}_url"]
        if url and url.startswith(("http://", "https://")):
            return Redirect(url)
        relative = row[f"{kind}_key"]
        if not relative:
            return None
        store = self.config.store
        problem: ObjectStoreError | None = None
        if row["published"] and store is not None:
            key = store.key(relative)  # the key publishing wrote (R2_PREFIX included)
            try:
                signed = self._presigned(store, key)
            except ObjectStoreError as exc:
                log.warning("cannot presign %s: %s", key, exc)
                problem = exc
            else:
                if signed is not None:
                    return signed
            path = store.local_file("public", key)
            if path is not None:
                return LocalFile(path, content_type_for(key))
        path = self._cached(relative)
        if path is not None:
            return LocalFile(path, content_type_for(relative))
        if problem is not None:
            raise MediaUnavailable(f"the object store cannot sign a URL for this {kind}: {problem}")
        return None

    def _presigned(self, store: ObjectStore, key: str) -> Redirect | None:
        lifetime = self.config.presign_seconds
        reuse = lifetime * REUSE_FRACTION
        now = self.clock()
        with self._lock:
            hit = self._signed.get(key)
        if hit is None or now - hit[1] >= reuse:
            url = store.presigned_get_url("public", key, lifetime, content_type=content_type_for(key),
                                          cache_control=f"private, max-age={lifetime}")
            if url is None:
                return None  # a local store: its file is served
            hit = (url, now)
            with self._lock:
                self._signed.pop(key, None)
                while len(self._signed) >= MAX_SIGNED:
                    self._signed.pop(next(iter(self._signed)))
                self._signed[key] = hit
        # A browser keeps the redirect only while the URL it names has >= half its life left.
        left = max(0, int(hit[1] + reuse - now))
        return Redirect(hit[0], f"private, max-age={left}")

    def _cached(self, relative: str) -> Path | None:
        if not self.config.derivative_cache_dir:
            return None
        root = Path(self.config.derivative_cache_dir).resolve()
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

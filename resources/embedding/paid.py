"""What the paid, remote providers share: a lazily built API client, HTTP status and
``Retry-After`` handling, and the clean image they send: the public URL of the thumbnail when
``IMAGE_BASE_URL`` is set and it is published, else a small JPEG made from the cached thumbnail
or the source. Never the watermarked preview: its tiled text would end up in the vectors and in
the captions."""

from __future__ import annotations

import base64
import email.utils
import io
import threading
from datetime import UTC, datetime
from typing import Any, ClassVar

import dagster as dg
from PIL import Image
from pydantic import PrivateAttr

from assemblage_assets.core import settings
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN, EmbeddingResource
from resources.embedding.call_retry import DEFAULT_CALL_ATTEMPTS, DEFAULT_RETRY_BASE_SECONDS
from resources.embedding.clip_encoder import decode_for_clip
from resources.embedding.types import (
    EmbeddingError,
    EmbedItem,
    ItemRejectedError,
    ProviderConfigError,
    RateLimitedError,
    TransientProviderError,
)

DEFAULT_TIMEOUT_SECONDS = 120.0


def retry_after_seconds(headers: Any, default: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``."""
    if headers is None:
        return default
    raw_ms = (headers.get("retry-after-ms") or "").strip()
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return default


def status_error(provider: str, status: int, detail: str) -> EmbeddingError:
    if status in (401, 403):
        return ProviderConfigError(f"{provider} rejected the credentials (HTTP {status}): {detail}")
    if status == 429:
        return RateLimitedError(f"{provider} rate limit (HTTP 429): {detail}")
    if status >= 500:
        return TransientProviderError(f"{provider} server error (HTTP {status}): {detail}", kind=f"http-{status}")
    return ItemRejectedError(f"{provider} rejected the request (HTTP {status}): {detail}", kind=f"http-{status}")


def _thumbnail_fits(item: EmbedItem, min_side: int, long_edge: int) -> bool:
    """Whether the cached thumbnail is at least the size asked for (read from its header)."""
    if not item.thumbnail_path:
        return False
    try:
        with Image.open(item.thumbnail_path) as probe:
            return min(probe.size) >= min_side and max(probe.size) >= long_edge
    except (OSError, SyntaxError, EOFError, ValueError):
        return False  # missing or damaged in the cache: the source decides


def clean_image(item: EmbedItem, *, min_side: int = 0, long_edge: int = 0) -> Image.Image:
    """The image without the watermark, upright RGB: short edge brought down to ``min_side``
    and/or long edge down to ``long_edge`` (never upscaled).

    From the cached thumbnail when it is that big (a small WebP decode), else from the source,
    else from the thumbnail at whatever size it has. Never from ``item.preview_path``.
    """
    fits = _thumbnail_fits(item, min_side, long_edge)
    paths = [(item.thumbnail_path, True)] if fits else []
    paths.append((item.path, False))
    if item.thumbnail_path and not fits:
        paths.append((item.thumbnail_path, True))
    last: Exception | None = None
    for path, cached in paths:
        if not path:
            continue
        try:
            # decode_for_clip: DCT-domain JPEG decode at the smallest scale still >= the size asked for
            img = decode_for_clip(path, min_side=max(min_side, long_edge, 1))
        except FileNotFoundError as exc:
            last = exc
            continue
        except Image.DecompressionBombError as exc:
            raise ItemRejectedError(f"decompression bomb: {exc}", kind="bomb") from exc
        except Exception as exc:  # noqa: BLE001 - undecodable
            if cached:  # a damaged cache entry is not the image's fault
                last = exc
                continue
            raise ItemRejectedError(f"cannot decode image: {type(exc).__name__}: {exc}", kind="corrupt") from exc
        if long_edge:
            img.thumbnail((long_edge, long_edge))
        return img
    raise ItemRejectedError(f"neither the source nor the thumbnail can be read: {last}", kind="missing-file")


def clean_jpeg(item: EmbedItem, *, min_side: int = 0, long_edge: int = 0, quality: int = 90) -> bytes:
    """``clean_image`` as JPEG bytes (in memory: a few tens of KB)."""
    buf = io.BytesIO()
    clean_image(item, min_side=min_side, long_edge=long_edge).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def clean_jpeg_data_url(item: EmbedItem, long_edge: int = 512) -> str:
    """A small clean JPEG as a data URL (what a vision model needs at low detail)."""
    return "data:image/jpeg;base64," + base64.b64encode(clean_jpeg(item, long_edge=long_edge, quality=85)).decode()


def env_has(name: str) -> bool:
    return bool(settings.env_str(name))


class PaidEmbedding(EmbeddingResource):
    """What the paid, remote providers share: a lazily built API client, a per-call timeout,
    the public thumbnail URL to send instead of the file, and a default calls-per-minute cap."""

    base_url: str = ""  # REPLICATE_BASE_URL / OPENAI_BASE_URL
    image_base_url: str = ""  # IMAGE_BASE_URL: send the uploaded thumbnail's public URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # REPLICATE_/OPENAI_TIMEOUT_SECONDS, per call
    max_calls_per_min: int = DEFAULT_PAID_CALLS_PER_MIN
    call_attempts: int = DEFAULT_CALL_ATTEMPTS  # PAID_CALL_ATTEMPTS: tries per request (5xx, resets, bad replies)
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS  # PAID_RETRY_BASE_SECONDS

    paid: ClassVar[bool] = True
    # Whether an interrupted call's result can be fetched later (Replicate: by prediction id);
    # otherwise the stage counts an interrupted call as billed and lost.
    resumable_calls: ClassVar[bool] = False

    _client: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.client()

    def client(self) -> Any:
        raise NotImplementedError

    def public_image_url(self, item: EmbedItem) -> str | None:
        """The public URL of the clean thumbnail, when ``IMAGE_BASE_URL`` is set and it is
        published; None otherwise (the caller then sends a clean file). The watermarked
        preview's URL is never used."""
        url = item.thumbnail_url
        if self.image_base_url and url and url.startswith(("http://", "https://")):
            return url
        return None

    @classmethod
    def paid_common(cls, common: dict[str, Any]) -> dict[str, Any]:
        """The shared fields with the paid defaults: a calls-per-minute cap and ``IMAGE_BASE_URL``."""
        return {
            **common,
            "max_calls_per_min": settings.env_int("MAX_EMBEDDING_CALLS_PER_MIN", DEFAULT_PAID_CALLS_PER_MIN),
            "image_base_url": settings.env_str("IMAGE_BASE_URL"),
            "call_attempts": settings.env_int("PAID_CALL_ATTEMPTS", DEFAULT_CALL_ATTEMPTS),
            "retry_base_seconds": settings.env_float("PAID_RETRY_BASE_SECONDS", DEFAULT_RETRY_BASE_SECONDS),
        }

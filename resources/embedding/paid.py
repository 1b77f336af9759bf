"""What the paid, remote providers share: a lazily built API client, HTTP status and
``Retry-After`` handling, and a small clean image to send when there is no public URL."""

from __future__ import annotations

import base64
import email.utils
import io
import threading
from datetime import UTC, datetime
from typing import Any, ClassVar

import dagster as dg
from pydantic import PrivateAttr

from assemblage_assets.core import settings
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN, EmbeddingResource
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


def preview_jpeg_data_url(item: EmbedItem, long_edge: int = 512) -> str:
    """A small JPEG of the image as a data URL (what a vision model needs at low detail)."""
    last: Exception | None = None
    for path in (item.preview_path, item.path):
        if not path:
            continue
        try:
            img = decode_for_clip(path, min_side=long_edge)
        except FileNotFoundError as exc:
            last = exc
            continue
        except Exception as exc:  # noqa: BLE001 - undecodable: the image is at fault
            raise ItemRejectedError(f"cannot decode image: {type(exc).__name__}: {exc}", kind="corrupt") from exc
        img.thumbnail((long_edge, long_edge))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    raise ItemRejectedError(f"neither the preview nor the source can be read: {last}", kind="missing-file")


def env_has(name: str) -> bool:
    return bool(settings.env_str(name))


class PaidEmbedding(EmbeddingResource):
    """What the paid, remote providers share: a lazily built API client, a per-call timeout,
    the public preview URL to send instead of the file, and a default calls-per-minute cap."""

    base_url: str = ""  # REPLICATE_BASE_URL / OPENAI_BASE_URL
    image_base_url: str = ""  # IMAGE_BASE_URL: send the uploaded preview's public URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # REPLICATE_/OPENAI_TIMEOUT_SECONDS, per call
    max_calls_per_min: int = DEFAULT_PAID_CALLS_PER_MIN

    paid: ClassVar[bool] = True

    _client: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.client()

    def client(self) -> Any:
        raise NotImplementedError

    @classmethod
    def paid_common(cls, common: dict[str, Any]) -> dict[str, Any]:
        """The shared fields with the paid defaults: a calls-per-minute cap and ``IMAGE_BASE_URL``."""
        return {
            **common,
            "max_calls_per_min": settings.env_int("MAX_EMBEDDING_CALLS_PER_MIN", DEFAULT_PAID_CALLS_PER_MIN),
            "image_base_url": settings.env_str("IMAGE_BASE_URL"),
        }

"""``replicate``: captions from a captioning model hosted on Replicate, through the official client.

``salesforce/blip`` (``task: image_captioning``) by default; ``REPLICATE_CAPTION_MODEL`` and
``REPLICATE_CAPTION_INPUT`` (extra input as JSON) choose another. Sends the published thumbnail's
URL when ``IMAGE_BASE_URL`` is set, else uploads a clean JPEG (files API). Never the watermarked
preview. The prediction is created with ``Prefer: wait`` and polled until it finishes or the
timeout passes (then canceled). Cost from the prediction's ``predict_time``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import dagster as dg
from pydantic import PrivateAttr

from assemblage_assets.core import settings
from resources.caption.base import CaptionItem, CaptionOutcome, CaptionResource, clean_caption, public_thumbnail_url
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN
from resources.embedding.paid import DEFAULT_TIMEOUT_SECONDS, clean_jpeg, env_has, status_error
from resources.embedding.replicate import _raise_on_429
from resources.embedding.types import (
    BadOutputError,
    ItemRejectedError,
    ProviderConfigError,
    TransientProviderError,
    Usage,
)

DEFAULT_REPLICATE_CAPTION_MODEL = "salesforce/blip:2e1dddc8621f72155f24cf2e0adbde548458d3cab9f00c0139eea840d0ac4746"
DEFAULT_CAPTION_INPUT = '{"task": "image_captioning"}'
BLIP_INPUT_SIDE = 384  # BLIP resizes to 384x384: a larger upload only costs upload time


def parse_caption(output: Any) -> str:
    """The caption of a prediction's output: a string ("Caption: a dog ..."), a list of string
    chunks (streaming models), or a dict with ``caption``/``text``/``output``."""
    value = output
    if isinstance(value, dict):
        value = next((value[k] for k in ("caption", "text", "output") if k in value), None)
        if value is None:
            raise BadOutputError(f"output has no caption (keys: {sorted(output)[:5]})", kind="malformed-output")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "".join(value)
    if not isinstance(value, str):
        raise BadOutputError(f"caption is not text: {type(value).__name__}", kind="malformed-output")
    text = clean_caption(value)
    if not text:
        raise BadOutputError("replicate returned an empty caption", kind="empty-output")
    return text


class ReplicateCaptions(CaptionResource):
    """Captions from a model hosted on Replicate (Salesforce BLIP by default)."""

    api_token: str = ""  # REPLICATE_API_TOKEN
    base_url: str = ""  # REPLICATE_BASE_URL
    caption_model: str = DEFAULT_REPLICATE_CAPTION_MODEL  # REPLICATE_CAPTION_MODEL: owner/name[:version]
    input_key: str = "image"  # REPLICATE_CAPTION_INPUT_KEY
    extra_input: str = DEFAULT_CAPTION_INPUT  # REPLICATE_CAPTION_INPUT (JSON object)
    image_base_url: str = ""  # IMAGE_BASE_URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # REPLICATE_TIMEOUT_SECONDS
    price_per_second: float = 0.000225  # REPLICATE_CAPTION_PRICE_PER_SECOND (predict time)
    price_per_call: float = 0.00025  # REPLICATE_CAPTION_PRICE_PER_CALL (no metrics; estimates)
    max_calls_per_min: int = DEFAULT_PAID_CALLS_PER_MIN

    provider_name: ClassVar[str] = "replicate"  # shares the replicate embedding provider's rate limit
    pool: ClassVar[str] = "replicate"
    kind: ClassVar[str] = "replicate"
    paid: ClassVar[bool] = True

    _client: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> ReplicateCaptions:
        return cls(
            api_token=secret("REPLICATE_API_TOKEN"),
            base_url=settings.env_str("REPLICATE_BASE_URL"),
            caption_model=settings.env_str("REPLICATE_CAPTION_MODEL", DEFAULT_REPLICATE_CAPTION_MODEL),
            input_key=settings.env_str("REPLICATE_CAPTION_INPUT_KEY", "image"),
            extra_input=settings.env_str("REPLICATE_CAPTION_INPUT", DEFAULT_CAPTION_INPUT),
            image_base_url=settings.env_str("IMAGE_BASE_URL"),
            timeout_seconds=settings.env_float("REPLICATE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            price_per_second=settings.env_float("REPLICATE_CAPTION_PRICE_PER_SECOND", 0.000225),
            price_per_call=settings.env_float("REPLICATE_CAPTION_PRICE_PER_CALL", 0.00025),
            **common,
        )

    @property
    def model_id(self) -> str:
        return f"replicate:{self.caption_model}"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.client()
        self.input_template()

    def estimate_cost_per_image(self) -> float:
        return self.price_per_call

    def input_template(self) -> dict[str, Any]:
        try:
            extra = json.loads(self.extra_input or "{}")
        except json.JSONDecodeError as exc:
            raise ProviderConfigError(f"REPLICATE_CAPTION_INPUT is not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ProviderConfigError("REPLICATE_CAPTION_INPUT must be a JSON object")
        return extra

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx
                import replicate

                if not self.api_token and not env_has("REPLICATE_API_TOKEN"):
                    raise ProviderConfigError("REPLICATE_API_TOKEN is not set")
                self._client = replicate.Client(
                    api_token=self.api_token or None,
                    base_url=self.base_url or None,
                    timeout=httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds)),
                    event_hooks={"response": [_raise_on_429]},  # 429 -> RateLimitedError with Retry-After
                )
            return self._client

    def _predict(self, payload: dict[str, Any]) -> Any:
        import httpx
        from replicate.exceptions import ReplicateError

        client = self.client()
        owner_name, _, version = self.caption_model.partition(":")
        wait = max(1, min(60, int(self.timeout_seconds)))
        deadline = time.monotonic() + self.timeout_seconds
        prediction = None
        try:
            if version:
                prediction = client.predictions.create(version=version, input=payload, wait=wait)
            else:
                owner, _, name = owner_name.partition("/")
                prediction = client.models.predictions.create(model=(owner, name), input=payload, wait=wait)
            while prediction.status not in ("succeeded", "failed", "canceled"):
                if time.monotonic() >= deadline:
                    raise TransientProviderError(
                        f"replicate prediction {prediction.id} not done after {self.timeout_seconds:g}s", kind="timeout"
                    )
                time.sleep(min(client.poll_interval, max(0.05, deadline - time.monotonic())))
                prediction.reload()
        except TransientProviderError:
            _cancel_quietly(prediction)
            raise
        except ReplicateError as exc:
            raise status_error("replicate", exc.status or 500, exc.detail or exc.title or str(exc)) from None
        except httpx.TimeoutException as exc:
            _cancel_quietly(prediction)
            raise TransientProviderError(f"replicate call timed out: {exc!r}", kind="timeout") from None
        except httpx.TransportError as exc:
            raise TransientProviderError(f"replicate unreachable: {type(exc).__name__}: {exc}", kind="network") from None
        except (ValueError, TypeError) as exc:
            raise TransientProviderError(f"replicate answered something unreadable: {exc}", kind="bad-response") from None
        return prediction

    def _usage(self, prediction: Any) -> Usage:
        seconds = (prediction.metrics or {}).get("predict_time")
        if isinstance(seconds, int | float) and seconds >= 0:
            return Usage(units=float(seconds), unit="seconds", cost_usd=float(seconds) * self.price_per_second)
        return Usage(units=1, unit="call", cost_usd=self.price_per_call)

    def caption_image(self, item: CaptionItem) -> CaptionOutcome:
        value: Any = public_thumbnail_url(self.image_base_url, item)
        if value is None:
            value = io.BytesIO(clean_jpeg(item, min_side=BLIP_INPUT_SIDE))
            value.name = f"{item.image_id}.jpg"  # the upload's file name and content type
        prediction = self._predict({**self.input_template(), self.input_key: value})
        usage = self._usage(prediction)
        if prediction.status == "failed":
            raise ItemRejectedError(f"replicate prediction failed: {prediction.error}", kind="prediction-failed", usage=usage)
        if prediction.status == "canceled":
            raise TransientProviderError("replicate prediction was canceled", kind="canceled")
        try:
            return CaptionOutcome(item.image_id, caption=parse_caption(prediction.output), usage=usage)
        except BadOutputError as exc:
            exc.usage = usage  # billed: its cost is recorded with the failure
            raise


def _cancel_quietly(prediction: Any) -> None:
    if prediction is None:
        return
    try:
        prediction.cancel()
    except Exception:  # noqa: BLE001 - best effort: the call already failed
        pass

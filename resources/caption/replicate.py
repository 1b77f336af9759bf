"""``replicate``: captions from a captioning model hosted on Replicate, through the official client.

``salesforce/blip`` (``task: image_captioning``) by default; ``REPLICATE_CAPTION_MODEL`` and
``REPLICATE_CAPTION_INPUT`` (extra input as JSON) choose another. Sends the published thumbnail's
URL when ``IMAGE_BASE_URL`` is set, else uploads a clean JPEG (files API, before the create, so
the input is a URL that identifies the call). Never the watermarked preview. Cost from the
prediction's ``predict_time``.

Crash-proof like the embedding provider (``resources/embedding/replicate_calls.py``): the
prediction is created without blocking, its intent (request ``caption``) committed to the journal
of paid calls before the create and its id the moment the create answers, then polled. A run
killed meanwhile leaves the id behind, and the next attempt fetches that prediction by id instead
of creating another; past ``REPLICATE_TIMEOUT_SECONDS`` it is left running (never canceled) for
the next attempt to fetch. The stage settles the intent with the caption and its cost row.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import dagster as dg
from pydantic import PrivateAttr

from assemblage_assets.core import settings
from resources.caption.base import (
    CAPTION_REQUEST,
    CaptionItem,
    CaptionOutcome,
    CaptionResource,
    clean_caption,
    public_thumbnail_url,
)
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN
from resources.embedding.call_retry import DEFAULT_CALL_ATTEMPTS, DEFAULT_RETRY_BASE_SECONDS
from resources.embedding.paid import DEFAULT_TIMEOUT_SECONDS, clean_jpeg
from resources.embedding.replicate_calls import Predictions, make_client, prediction_usage
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
    call_attempts: int = DEFAULT_CALL_ATTEMPTS  # PAID_CALL_ATTEMPTS: tries per request (5xx, resets, bad replies)
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS  # PAID_RETRY_BASE_SECONDS

    provider_name: ClassVar[str] = "replicate"  # shares the replicate embedding provider's rate limit
    pool: ClassVar[str] = "replicate"
    kind: ClassVar[str] = "replicate"
    paid: ClassVar[bool] = True
    resumable_calls: ClassVar[bool] = True

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
            call_attempts=settings.env_int("PAID_CALL_ATTEMPTS", DEFAULT_CALL_ATTEMPTS),
            retry_base_seconds=settings.env_float("PAID_RETRY_BASE_SECONDS", DEFAULT_RETRY_BASE_SECONDS),
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
                self._client = make_client(self.api_token, self.base_url, self.timeout_seconds)
            return self._client

    def _predictions(self) -> Predictions:
        """Create, resume and poll predictions of ``caption_model``, journaled as ``caption``."""
        return Predictions(self.client, self.caption_model, request=CAPTION_REQUEST,
                           timeout_seconds=self.timeout_seconds, attempts=self.call_attempts,
                           base_seconds=self.retry_base_seconds,
                           lost_usage=Usage(units=1, unit="call", cost_usd=self.price_per_call))

    def _image_input(self, item: CaptionItem, calls: Predictions) -> str:
        """The published thumbnail's URL, else a clean JPEG uploaded through the files API (free,
        so retried) before the create: the create's input is then a URL that identifies it."""
        url = public_thumbnail_url(self.image_base_url, item)
        if url is not None:
            return url
        data = io.BytesIO(clean_jpeg(item, min_side=BLIP_INPUT_SIDE))
        data.name = f"{item.image_id}.jpg"  # the upload's file name and content type

        def upload() -> Any:
            data.seek(0)
            return self.client().files.create(data)

        return calls.retrying(upload).urls["get"]

    def caption_image(self, item: CaptionItem) -> CaptionOutcome:
        calls, journal = self._predictions(), item.journal
        prediction = calls.resume(item.image_id, journal) if journal is not None else None
        if prediction is None:
            payload = {**self.input_template(), self.input_key: self._image_input(item, calls)}
            prediction = calls.create(payload, item.image_id, journal)
        prediction = calls.wait(prediction)
        usage = prediction_usage(prediction, self.price_per_second, self.price_per_call)
        if prediction.status == "failed":
            raise ItemRejectedError(f"replicate prediction failed: {prediction.error}", kind="prediction-failed", usage=usage)
        if prediction.status == "canceled":  # billed for the time it ran
            raise TransientProviderError("replicate prediction was canceled", kind="canceled", usage=usage)
        try:
            return CaptionOutcome(item.image_id, caption=parse_caption(prediction.output), usage=usage)
        except BadOutputError as exc:
            exc.usage = usage  # billed: its cost is recorded with the failure
            raise

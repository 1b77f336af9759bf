"""``openai``: captions (and tags) from an OpenAI vision model: the same request, model id and
prices as the ``openai`` embedding route (``resources/embedding/openai_vision.py``), so a caption
bought here is reused by that route and never bought again.

Each request goes through ``openai_vision.journaled_send``: its intent (request ``caption``) is
committed before it is sent and settled with the caption and its cost row. OpenAI has no id to
fetch a lost answer by: a try whose answer was not seen, or an intent a killed run left open, is
logged as a billed, lost call at the estimated price, so the cost log never under-counts."""

from __future__ import annotations

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
    public_thumbnail_url,
)
from resources.embedding import openai_vision
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN
from resources.embedding.call_retry import DEFAULT_CALL_ATTEMPTS, DEFAULT_RETRY_BASE_SECONDS
from resources.embedding.paid import DEFAULT_TIMEOUT_SECONDS, clean_jpeg_data_url
from resources.embedding.types import Usage


class OpenAICaptions(CaptionResource):
    """One chat completion per image: a one-sentence caption and up to 10 tags."""

    api_key: str = ""  # OPENAI_API_KEY
    base_url: str = ""  # OPENAI_BASE_URL
    vision_model: str = openai_vision.DEFAULT_OPENAI_VISION_MODEL  # OPENAI_VISION_MODEL
    image_detail: str = "low"  # OPENAI_IMAGE_DETAIL
    image_base_url: str = ""  # IMAGE_BASE_URL: send the published thumbnail's URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # OPENAI_TIMEOUT_SECONDS
    price_input_per_mtok: float = 0.25  # OPENAI_PRICE_INPUT_PER_MTOK
    price_output_per_mtok: float = 2.0  # OPENAI_PRICE_OUTPUT_PER_MTOK
    est_tokens_per_image: int = 1200  # OPENAI_EST_TOKENS_PER_IMAGE (estimate only)
    max_calls_per_min: int = DEFAULT_PAID_CALLS_PER_MIN
    call_attempts: int = DEFAULT_CALL_ATTEMPTS  # PAID_CALL_ATTEMPTS: tries per request (5xx, resets, bad replies)
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS  # PAID_RETRY_BASE_SECONDS

    provider_name: ClassVar[str] = "openai"  # shares the openai embedding provider's rate limit
    pool: ClassVar[str] = "openai"
    kind: ClassVar[str] = "openai"
    paid: ClassVar[bool] = True

    _client: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> OpenAICaptions:
        return cls(
            api_key=secret("OPENAI_API_KEY"),
            base_url=settings.env_str("OPENAI_BASE_URL"),
            vision_model=settings.env_str("OPENAI_VISION_MODEL", openai_vision.DEFAULT_OPENAI_VISION_MODEL),
            image_detail=settings.env_str("OPENAI_IMAGE_DETAIL", "low"),
            image_base_url=settings.env_str("IMAGE_BASE_URL"),
            timeout_seconds=settings.env_float("OPENAI_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            price_input_per_mtok=settings.env_float("OPENAI_PRICE_INPUT_PER_MTOK", 0.25),
            price_output_per_mtok=settings.env_float("OPENAI_PRICE_OUTPUT_PER_MTOK", 2.0),
            est_tokens_per_image=settings.env_int("OPENAI_EST_TOKENS_PER_IMAGE", 1200),
            call_attempts=settings.env_int("PAID_CALL_ATTEMPTS", DEFAULT_CALL_ATTEMPTS),
            retry_base_seconds=settings.env_float("PAID_RETRY_BASE_SECONDS", DEFAULT_RETRY_BASE_SECONDS),
            **common,
        )

    @property
    def model_id(self) -> str:
        return openai_vision.caption_model_id(self.vision_model)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.client()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = openai_vision.make_client(self.api_key, self.base_url, self.timeout_seconds)
            return self._client

    def estimate_cost_per_image(self) -> float:
        return (self.est_tokens_per_image * self.price_input_per_mtok + 100 * self.price_output_per_mtok) / 1e6

    def caption_image(self, item: CaptionItem) -> CaptionOutcome:
        # The published thumbnail (clean), else a clean 512 px JPEG (low detail is 512x512).
        url = public_thumbnail_url(self.image_base_url, item) or clean_jpeg_data_url(item)
        caption, tags, usage = openai_vision.describe(
            self.client(), url, vision_model=self.vision_model, detail=self.image_detail,
            timeout_seconds=self.timeout_seconds, price_input_per_mtok=self.price_input_per_mtok,
            price_output_per_mtok=self.price_output_per_mtok,
            send=openai_vision.journaled_send(
                item.journal, item.image_id, CAPTION_REQUEST, attempts=self.call_attempts,
                base_seconds=self.retry_base_seconds,
                lost_usage=Usage(units=1, unit="call", cost_usd=self.estimate_cost_per_image()),
            ),
        )
        return CaptionOutcome(item.image_id, caption=caption, tags=tags, usage=usage)

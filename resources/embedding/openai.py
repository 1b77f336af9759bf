"""``openai``: OpenAI has no image-embedding endpoint, so an image is described by a vision model
(a caption plus tags, as JSON) and that text, with the image's known tags, is embedded by a
text-embedding model. The caption is stored too."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from assemblage_assets.core import settings
from resources.embedding import openai_vision
from resources.embedding.openai_vision import CAPTION_INSTRUCTIONS, DEFAULT_OPENAI_VISION_MODEL
from resources.embedding.paid import DEFAULT_TIMEOUT_SECONDS, PaidEmbedding, clean_jpeg_data_url
from resources.embedding.types import (
    BadOutputError,
    EmbeddingError,
    EmbedItem,
    EmbedOutcome,
    ProviderConfigError,
    Usage,
    parse_embedding,
)

__all__ = ["CAPTION_INSTRUCTIONS", "DEFAULT_OPENAI_VISION_MODEL", "OpenAIEmbedding"]
DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-small"
OPENAI_EMBEDDING_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class OpenAIEmbedding(PaidEmbedding):
    """Caption (vision model) + tags, embedded as text. OpenAI has no image-embedding endpoint."""

    api_key: str = ""  # OPENAI_API_KEY
    vision_model: str = DEFAULT_OPENAI_VISION_MODEL  # OPENAI_VISION_MODEL
    embedding_model: str = DEFAULT_OPENAI_EMBEDDING_MODEL  # OPENAI_EMBEDDING_MODEL
    dimensions: int = 0  # OPENAI_EMBEDDING_DIMENSIONS; 0: the model's own
    image_detail: str = "low"  # OPENAI_IMAGE_DETAIL
    price_input_per_mtok: float = 0.25  # OPENAI_PRICE_INPUT_PER_MTOK (vision model input)
    price_output_per_mtok: float = 2.0  # OPENAI_PRICE_OUTPUT_PER_MTOK
    price_embedding_per_mtok: float = 0.02  # OPENAI_PRICE_EMBEDDING_PER_MTOK
    est_tokens_per_image: int = 1200  # OPENAI_EST_TOKENS_PER_IMAGE (estimate only)

    provider_name: ClassVar[str] = "openai"
    pool: ClassVar[str] = "openai"
    kind: ClassVar[str] = "openai"

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> OpenAIEmbedding:
        return cls(
            api_key=secret("OPENAI_API_KEY"),
            base_url=settings.env_str("OPENAI_BASE_URL"),
            vision_model=settings.env_str("OPENAI_VISION_MODEL", DEFAULT_OPENAI_VISION_MODEL),
            embedding_model=settings.env_str("OPENAI_EMBEDDING_MODEL", DEFAULT_OPENAI_EMBEDDING_MODEL),
            dimensions=settings.env_int("OPENAI_EMBEDDING_DIMENSIONS", 0),
            image_detail=settings.env_str("OPENAI_IMAGE_DETAIL", "low"),
            timeout_seconds=settings.env_float("OPENAI_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            price_input_per_mtok=settings.env_float("OPENAI_PRICE_INPUT_PER_MTOK", 0.25),
            price_output_per_mtok=settings.env_float("OPENAI_PRICE_OUTPUT_PER_MTOK", 2.0),
            price_embedding_per_mtok=settings.env_float("OPENAI_PRICE_EMBEDDING_PER_MTOK", 0.02),
            est_tokens_per_image=settings.env_int("OPENAI_EST_TOKENS_PER_IMAGE", 1200),
            **cls.paid_common(common),
        )

    @property
    def model_id(self) -> str:
        suffix = f"@{self.dimensions}" if self.dimensions else ""
        return f"openai:{self.vision_model}+{self.embedding_model}{suffix}"

    @property
    def caption_model(self) -> str:
        return openai_vision.caption_model_id(self.vision_model)

    @property
    def dim(self) -> int:
        if self.dimensions:
            return self.dimensions
        if self.embedding_model in OPENAI_EMBEDDING_DIMS:
            return OPENAI_EMBEDDING_DIMS[self.embedding_model]
        raise ProviderConfigError(
            f"unknown dimension of {self.embedding_model!r}: set OPENAI_EMBEDDING_DIMENSIONS"
        )

    def estimate_cost_per_image(self) -> float:
        return (
            self.est_tokens_per_image * self.price_input_per_mtok + 100 * self.price_output_per_mtok
            + 100 * self.price_embedding_per_mtok
        ) / 1e6

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = openai_vision.make_client(self.api_key, self.base_url, self.timeout_seconds)
            return self._client

    def _call(self, fn: Any, *, item: EmbedItem | None = None, request: str = "", **kwargs: Any) -> Any:
        """One billable request, journaled (intent before it is sent) when ``item`` carries the
        stage's journal, and tried again a few times on a 5xx, a reset or an unreadable reply
        (``openai_vision.journaled_send``)."""
        send = openai_vision.journaled_send(
            item.journal if item is not None else None, item.image_id if item is not None else None, request,
            lost_usage=self._lost_usage(), attempts=self.call_attempts, base_seconds=self.retry_base_seconds,
        )
        return send(fn, self.timeout_seconds, **kwargs)

    def _lost_usage(self) -> Usage:
        return Usage(units=1, unit="call", cost_usd=self.estimate_cost_per_image())

    def _caption(self, item: EmbedItem) -> tuple[str, list[tuple[str, float]], Usage]:
        # The published thumbnail (clean), else a clean 512 px JPEG (low detail is 512x512): the
        # watermarked preview's tiled text would end up in the caption.
        url = self.public_image_url(item) or clean_jpeg_data_url(item)
        return openai_vision.describe(
            self.client(), url, vision_model=self.vision_model, detail=self.image_detail,
            timeout_seconds=self.timeout_seconds, price_input_per_mtok=self.price_input_per_mtok,
            price_output_per_mtok=self.price_output_per_mtok,
            send=lambda fn, _timeout, **kw: self._call(fn, item=item, request="caption", **kw),
        )

    def _embed_texts(self, texts: list[str], item: EmbedItem | None = None) -> tuple[np.ndarray, Usage]:
        kwargs: dict[str, Any] = {"model": self.embedding_model, "input": texts}
        if self.dimensions:
            kwargs["dimensions"] = self.dimensions
        response = self._call(self.client().embeddings.create, item=item, request="embedding", **kwargs)
        tokens = int(getattr(getattr(response, "usage", None), "prompt_tokens", 0) or 0)
        usage = Usage(units=tokens, unit="tokens", input_tokens=tokens, output_tokens=0,
                      cost_usd=tokens * self.price_embedding_per_mtok / 1e6)
        data = sorted(getattr(response, "data", None) or [], key=lambda d: getattr(d, "index", 0))
        if len(data) != len(texts):
            raise BadOutputError(f"openai returned {len(data)} embeddings for {len(texts)} texts", kind="empty-output", usage=usage)
        try:
            vectors = np.stack([parse_embedding(d.embedding, self.dim) for d in data])
        except BadOutputError as exc:
            exc.usage = usage
            raise
        return vectors, usage

    def billable_requests(self, item: EmbedItem) -> int:
        """A caption request then an embeddings request; only the latter when the caption was
        paid for in an earlier attempt."""
        return 1 if item.caption else 2

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        usage = None
        if item.caption:
            caption, new_tags = item.caption, []  # paid for in an earlier attempt
        else:
            caption, new_tags, usage = self._caption(item)
        tags = sorted({t for t, _ in new_tags} | set(item.tags))
        document = caption + (f"\nTags: {', '.join(tags)}" if tags else "")
        try:
            vectors, embed_usage = self._embed_texts([document], item)
        except EmbeddingError as exc:
            # The caption was paid for: hand it back so it is stored and not bought again.
            exc.usage = usage + exc.usage if usage and exc.usage else (usage or exc.usage)
            exc.caption, exc.caption_model, exc.tags = (caption, self.caption_model, new_tags) if usage else (None, None, [])
            raise
        total = usage + embed_usage if usage else embed_usage
        return EmbedOutcome(
            item.image_id, vector=vectors[0], usage=total,
            caption=caption if usage else None, caption_model=self.caption_model if usage else None, tags=new_tags,
        )

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        return self._embed_texts(list(texts))

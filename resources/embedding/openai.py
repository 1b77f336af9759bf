"""``openai``: OpenAI has no image-embedding endpoint, so an image is described by a vision model
(a caption plus tags, as JSON) and that text, with the image's known tags, is embedded by a
text-embedding model. The caption is stored too."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from assemblage_assets.core import settings
from assemblage_assets.core.tags import normalize_tags
from resources.embedding.paid import (
    DEFAULT_TIMEOUT_SECONDS,
    PaidEmbedding,
    clean_jpeg_data_url,
    env_has,
    retry_after_seconds,
    status_error,
)
from resources.embedding.types import (
    BadOutputError,
    EmbeddingError,
    EmbedItem,
    EmbedOutcome,
    ProviderConfigError,
    RateLimitedError,
    TransientProviderError,
    Usage,
    parse_embedding,
)

DEFAULT_OPENAI_VISION_MODEL = "gpt-5.4-mini"
DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-small"
OPENAI_EMBEDDING_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


CAPTION_INSTRUCTIONS = (
    "Describe the photo for a search index. Answer with JSON only: "
    '{"caption": "<one factual sentence: main subjects, setting, colours, visible text>", '
    '"tags": ["<up to 10 short lowercase nouns or noun phrases>"]}'
)


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
        return f"openai:{self.vision_model}"

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
                import openai

                if not self.api_key and not env_has("OPENAI_API_KEY"):
                    raise ProviderConfigError("OPENAI_API_KEY is not set")
                self._client = openai.OpenAI(
                    api_key=self.api_key or None,
                    base_url=self.base_url or None,
                    timeout=self.timeout_seconds,
                    max_retries=0,  # retries are the stage's: rate limit, Retry-After, the queue
                )
            return self._client

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(**kwargs)
        except openai.RateLimitError as exc:
            raise RateLimitedError(f"openai rate limit (HTTP 429): {exc.message}", retry_after_seconds(exc.response.headers)) from None
        except openai.NotFoundError as exc:
            raise ProviderConfigError(f"openai: model not found ({kwargs.get('model')}): {exc.message}") from None
        except openai.APIStatusError as exc:
            raise status_error("openai", exc.status_code, exc.message) from None
        except openai.APITimeoutError:
            raise TransientProviderError(f"openai call timed out after {self.timeout_seconds:g}s", kind="timeout") from None
        except openai.APIConnectionError as exc:
            raise TransientProviderError(f"openai unreachable: {exc}", kind="network") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise BadOutputError(f"openai answered something unreadable: {exc}", kind="malformed-output") from None

    def _caption(self, item: EmbedItem) -> tuple[str, list[tuple[str, float]], Usage]:
        # The published thumbnail (clean), else a clean 512 px JPEG (low detail is 512x512): the
        # watermarked preview's tiled text would end up in the caption.
        url = self.public_image_url(item) or clean_jpeg_data_url(item)
        response = self._call(
            self.client().chat.completions.create,
            model=self.vision_model,
            messages=[{
                "role": "user",
                "content": [
                    {"type": "text", "text": CAPTION_INSTRUCTIONS},
                    {"type": "image_url", "image_url": {"url": url, "detail": self.image_detail}},
                ],
            }],
            response_format={"type": "json_object"},
            max_completion_tokens=400,
        )
        usage = self._chat_usage(response)
        try:
            text = (response.choices[0].message.content or "").strip()
        except (AttributeError, IndexError, TypeError):
            raise BadOutputError("openai returned no caption", kind="empty-output", usage=usage) from None
        caption, tags = text, []
        try:
            data = json.loads(text)
            if isinstance(data, dict):
                caption = str(data.get("caption") or "").strip()
                tags = [(str(t), 1.0) for t in data.get("tags") or [] if isinstance(t, str | int | float)]
        except json.JSONDecodeError:
            pass  # plain text answer: the whole text is the caption
        if not caption:
            raise BadOutputError("openai returned an empty caption", kind="empty-output", usage=usage)
        return caption, normalize_tags(tags), usage

    def _chat_usage(self, response: Any) -> Usage:
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = (prompt * self.price_input_per_mtok + completion * self.price_output_per_mtok) / 1e6
        return Usage(units=prompt + completion, unit="tokens", input_tokens=prompt, output_tokens=completion, cost_usd=cost)

    def _embed_texts(self, texts: list[str]) -> tuple[np.ndarray, Usage]:
        kwargs: dict[str, Any] = {"model": self.embedding_model, "input": texts}
        if self.dimensions:
            kwargs["dimensions"] = self.dimensions
        response = self._call(self.client().embeddings.create, **kwargs)
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
            vectors, embed_usage = self._embed_texts([document])
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

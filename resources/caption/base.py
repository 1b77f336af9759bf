"""The base every caption provider implements: what the ``captions`` asset annotates.

A provider turns images into one-sentence captions for ``images.caption`` (and its full-text
index). Inputs are the embedding stage's ``EmbedItem`` (source path, clean thumbnail, public
thumbnail URL); errors are the typed errors of ``resources/embedding/types.py``, with the same
meaning: ``ProviderConfigError`` fails the run, ``RateLimitedError`` waits, anything else is
recorded for that image and the shard carries on.

Paid providers journal each billable request in ``paid_call_intents`` (``item.journal``, set by
the captions stage) under the request name ``caption`` and the caption model: an intent before it
is sent, settled with its cost row and caption. ``resumable_calls`` says whether a killed run's
request can be fetched again (Replicate, by prediction id) or is counted as billed and lost
(OpenAI).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dagster as dg

from resources.embedding.types import EmbeddingError, EmbedItem, ProviderConfigError, RateLimitedError, Usage

CaptionItem = EmbedItem  # the same forms of an image as the embedding providers get
CAPTION_REQUEST = "caption"  # the request's name in the journal of paid calls


@dataclass
class CaptionOutcome:
    """One image's caption, or an error kind and message (never both)."""

    image_id: str
    caption: str | None = None
    tags: list[tuple[str, float]] = field(default_factory=list)  # tags the model gave with it (OpenAI)
    error_kind: str | None = None
    error: str | None = None
    usage: Usage | None = None  # set when a paid call came back, even if its output was unusable

    @property
    def ok(self) -> bool:
        return bool(self.caption) and self.error_kind is None


def clean_caption(text: str, max_chars: int = 1000) -> str:
    """One line, no surrounding quotes or "Caption:" prefix (Replicate's BLIP adds one)."""
    text = " ".join(str(text).split()).strip().strip('"').strip()
    if text.lower().startswith("caption:"):
        text = text[len("caption:"):].strip()
    return text[:max_chars]


class CaptionResource(dg.ConfigurableResource):
    """A provider of image captions."""

    batch_size: int = 8  # CAPTION_BATCH_SIZE (local models)
    concurrency: int = 4  # CONCURRENCY: parallel calls of paid providers
    max_calls_per_min: int = 0  # MAX_EMBEDDING_CALLS_PER_MIN: the provider's shared limit; 0: unlimited

    provider_name: ClassVar[str] = ""  # CAPTION_PROVIDER value; also the rate-limit key of paid ones
    pool: ClassVar[str] = ""  # Dagster concurrency pool of the external system it calls
    kind: ClassVar[str] = ""  # Dagster kind shown on the captions asset
    paid: ClassVar[bool] = False
    enabled: ClassVar[bool] = True
    # Whether an interrupted paid call's result can be fetched later (Replicate: by prediction
    # id); otherwise the stage counts a killed run's open requests as billed and lost.
    resumable_calls: ClassVar[bool] = False

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> CaptionResource:
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        """What ``images.caption_model`` holds for this provider's captions."""
        raise NotImplementedError

    @property
    def random_weights(self) -> bool:
        """True for the tiny random checkpoint (tests, demo): its captions carry no meaning."""
        return False

    def describe(self) -> str:
        return f"{self.provider_name} {self.model_id}"

    def caption_image(self, item: CaptionItem) -> CaptionOutcome:
        """One image, one call; raises the typed errors of ``resources.embedding.types``."""
        raise NotImplementedError

    def caption_batch(self, items: Sequence[CaptionItem]) -> list[CaptionOutcome]:
        """One outcome per item; per-image problems become outcomes, configuration errors raise."""
        outcomes = []
        for item in items:
            try:
                outcomes.append(self.caption_image(item))
            except (ProviderConfigError, RateLimitedError):
                raise
            except EmbeddingError as exc:
                outcomes.append(CaptionOutcome(item.image_id, error_kind=exc.kind, error=str(exc), usage=exc.usage))
        return outcomes

    def estimate_cost_per_image(self) -> float:
        return 0.0


class NoCaptions(CaptionResource):
    """``CAPTION_PROVIDER=none`` (the default): the ``captions`` asset records that nothing was
    captioned. The ``openai`` embedding provider still captions as part of its route."""

    provider_name: ClassVar[str] = "none"
    pool: ClassVar[str] = "captions"
    kind: ClassVar[str] = "python"
    enabled: ClassVar[bool] = False

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> NoCaptions:
        return cls(**common)

    @property
    def model_id(self) -> str:
        return ""

    def caption_image(self, item: CaptionItem) -> CaptionOutcome:
        raise ProviderConfigError("CAPTION_PROVIDER is 'none': set blip, openai or replicate to caption images")


def public_thumbnail_url(image_base_url: str, item: CaptionItem) -> str | None:
    """The published clean thumbnail's URL when ``IMAGE_BASE_URL`` is set (never the watermarked
    preview: its tiled text would end up in the caption)."""
    url = item.thumbnail_url
    if image_base_url and url and url.startswith(("http://", "https://")):
        return url
    return None

"""Caption providers as Dagster resources, chosen by ``CAPTION_PROVIDER``.

``CaptionResource`` (``base.py``) is what the ``captions`` asset annotates; ``definitions.py``
builds the configured subclass with ``from_env()``. One module per provider:

- ``none`` (default): nothing is captioned (the ``openai`` embedding route still captions).
- ``blip`` (``blip.py``): BLIP through ``transformers`` by name or local path (``BLIP_MODEL``),
  BLIP-2 on a GPU.
- ``openai`` (``openai.py``): a vision model's caption and tags (the embedding route's request).
- ``replicate`` (``replicate.py``): a captioning model on Replicate (``salesforce/blip``).

Paid providers raise the typed errors of ``resources/embedding/types.py`` per call and journal
each billable request through ``item.journal`` (issue 14's ``paid_call_intents``: Replicate
resumes a killed run's prediction by id, OpenAI's open requests are logged as billed and lost);
the captions stage owns concurrency, the shared rate limit (the same counters as the provider's
embeddings), failures, the journal and the cost log. A new provider is one module plus one entry
in ``PROVIDERS``.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from assemblage_assets.core import settings
from resources.caption.base import CaptionItem, CaptionOutcome, CaptionResource, NoCaptions
from resources.caption.blip import DEFAULT_BLIP2_MODEL, DEFAULT_BLIP_MODEL, TINY_BLIP_WARNING, BlipCaptions
from resources.caption.openai import OpenAICaptions
from resources.caption.replicate import DEFAULT_REPLICATE_CAPTION_MODEL, ReplicateCaptions
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN

PROVIDERS: dict[str, type[CaptionResource]] = {
    cls.provider_name: cls for cls in (NoCaptions, BlipCaptions, OpenAICaptions, ReplicateCaptions)
}
DEFAULT_PROVIDER = "none"

__all__ = [
    "DEFAULT_BLIP2_MODEL", "DEFAULT_BLIP_MODEL", "DEFAULT_PROVIDER", "DEFAULT_REPLICATE_CAPTION_MODEL", "PROVIDERS",
    "TINY_BLIP_WARNING", "BlipCaptions", "CaptionItem", "CaptionOutcome", "CaptionResource", "NoCaptions",
    "OpenAICaptions", "ReplicateCaptions", "from_env", "provider_class", "provider_from_env",
]


def provider_from_env() -> str:
    provider = settings.env_str("CAPTION_PROVIDER", DEFAULT_PROVIDER).lower().strip()
    if provider not in PROVIDERS:
        raise ValueError(f"CAPTION_PROVIDER must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    return provider


def provider_class() -> type[CaptionResource]:
    """The class ``CAPTION_PROVIDER`` selects (its pool and kind), without building it."""
    return PROVIDERS[provider_from_env()]


def from_env(*, secrets_from_dagster: bool = False) -> CaptionResource:
    """The caption provider configured by the environment (see README for every variable).
    ``secrets_from_dagster``: API keys as ``dg.EnvVar`` (resolved when a run starts)."""
    cls = provider_class()
    common: dict[str, Any] = {
        "batch_size": settings.env_int("CAPTION_BATCH_SIZE", 8),
        "concurrency": settings.env_int("CONCURRENCY", 4),
        # the same variable as the embeddings: the limit is the provider account's, shared by both
        "max_calls_per_min": settings.env_int("MAX_EMBEDDING_CALLS_PER_MIN", DEFAULT_PAID_CALLS_PER_MIN if cls.paid else 0),
    }

    def secret(name: str) -> Any:
        if secrets_from_dagster and settings.env_str(name):
            return dg.EnvVar(name)
        return settings.env_str(name)

    return cls.from_env(common, secret)

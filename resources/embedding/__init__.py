"""Embedding providers as Dagster resources, chosen by ``EMBEDDING_PROVIDER``.

``EmbeddingResource`` (``base.py``) is what assets annotate; ``definitions.py`` builds the
configured subclass with ``from_env()``. One module per provider:

- ``local_clip`` (default, ``local_clip.py``): sentence-transformers CLIP by name or local path
  (``CLIP_MODEL``, default ``clip-ViT-L-14``, 768-d), CUDA when present, batched, normalized;
  also embeds text (search, zero-shot tags). The model code is in ``clip_encoder.py``; how it
  runs (``CLIP_BACKEND``/``CLIP_PRECISION``: torch fp32/bf16/fp16, ONNX fp32/int8, ``auto``)
  in ``clip_backends.py``, ``clip_export.py`` (ONNX builds) and ``clip_auto.py``.
- ``replicate`` (``replicate.py``): the official client, ``krthr/clip-embeddings`` by default.
- ``openai`` (``openai.py``): a vision model's caption and tags, embedded as text.

Paid providers (``paid.py``) raise the typed errors of ``types.py`` per call; the embeddings
stage owns concurrency, the shared rate limit, the retry queue and the cost log. A new
provider is one module with an ``EmbeddingResource`` subclass plus one line in ``PROVIDERS``.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from assemblage_assets.core import settings
from resources.embedding.base import DEFAULT_PAID_CALLS_PER_MIN, EmbeddingResource
from resources.embedding.clip_encoder import DEFAULT_CLIP_MODEL
from resources.embedding.local_clip import LocalClipEmbedding
from resources.embedding.openai import OpenAIEmbedding
from resources.embedding.paid import PaidEmbedding
from resources.embedding.replicate import DEFAULT_REPLICATE_MODEL, ReplicateEmbedding

# The provider table: EMBEDDING_PROVIDER value -> class (which knows its pool, kind and variables).
PROVIDERS: dict[str, type[EmbeddingResource]] = {
    cls.provider_name: cls for cls in (LocalClipEmbedding, ReplicateEmbedding, OpenAIEmbedding)
}
DEFAULT_PROVIDER = "local_clip"

__all__ = [
    "DEFAULT_CLIP_MODEL", "DEFAULT_PAID_CALLS_PER_MIN", "DEFAULT_PROVIDER", "DEFAULT_REPLICATE_MODEL", "PROVIDERS",
    "EmbeddingResource", "LocalClipEmbedding", "OpenAIEmbedding", "PaidEmbedding", "ReplicateEmbedding",
    "active_model_id", "from_env", "provider_class", "provider_from_env",
]


def provider_from_env() -> str:
    provider = settings.env_str("EMBEDDING_PROVIDER", DEFAULT_PROVIDER).lower().replace("-", "_")
    if provider not in PROVIDERS:
        raise ValueError(f"EMBEDDING_PROVIDER must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    return provider


def provider_class() -> type[EmbeddingResource]:
    """The class ``EMBEDDING_PROVIDER`` selects (its pool and kind), without building it."""
    return PROVIDERS[provider_from_env()]


def from_env(*, secrets_from_dagster: bool = False) -> EmbeddingResource:
    """The provider configured by the environment (see README for every variable).

    ``secrets_from_dagster``: pass API keys as ``dg.EnvVar`` (resolved by Dagster when a run
    starts, never shown in the UI) instead of their values, for the code location.
    """
    common: dict[str, Any] = {
        "expected_vector_dim": settings.env_int("EXPECTED_VECTOR_DIM", 0),
        "batch_size": settings.env_int("EMBED_BATCH_SIZE", 32),
        "concurrency": settings.env_int("CONCURRENCY", 4),
        "tag_vocabulary": settings.env_str("TAG_VOCABULARY"),
    }

    def secret(name: str) -> Any:
        if secrets_from_dagster and settings.env_str(name):
            return dg.EnvVar(name)
        return settings.env_str(name)

    return provider_class().from_env(common, secret)


def active_model_id() -> str:
    """The model id the environment selects, without loading anything (sensors, schedules)."""
    return from_env().model_id

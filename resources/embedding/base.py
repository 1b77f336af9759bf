"""The base every embedding provider implements: what the ``embeddings`` asset annotates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import dagster as dg
import numpy as np

from resources.embedding.types import (
    EmbeddingError,
    EmbedItem,
    EmbedOutcome,
    ProviderConfigError,
    RateLimitedError,
    Usage,
)

DEFAULT_PAID_CALLS_PER_MIN = 20


class EmbeddingResource(dg.ConfigurableResource):
    """A provider of image vectors (and, where it can, text vectors in the same space)."""

    expected_vector_dim: int = 0  # EXPECTED_VECTOR_DIM; 0: accept the provider's dimension
    batch_size: int = 32  # EMBED_BATCH_SIZE
    concurrency: int = 4  # CONCURRENCY: parallel calls of paid providers
    max_calls_per_min: int = 0  # MAX_EMBEDDING_CALLS_PER_MIN; 0: unlimited
    tag_vocabulary: str = ""  # TAG_VOCABULARY (zero-shot tags; local CLIP only)

    provider_name: ClassVar[str] = ""  # the key in the provider table and in embedding_models
    pool: ClassVar[str] = ""  # Dagster concurrency pool of the external system it calls
    kind: ClassVar[str] = ""  # Dagster kind shown on the embeddings asset
    paid: ClassVar[bool] = False
    zero_shot_tags: ClassVar[bool] = False

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> EmbeddingResource:
        """This provider from its environment variables; ``common`` holds the shared fields and
        ``secret(NAME)`` gives an API key (an ``EnvVar`` in the code location)."""
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def source(self) -> str:
        """Where the model comes from, recorded in ``embedding_models``."""
        return self.model_id

    @property
    def vector_backend(self) -> str | None:
        """How this provider computes vectors on this machine (``onnx-int8``), recorded on each
        row; None for remote providers."""
        return None

    @property
    def backend_detail(self) -> dict[str, Any]:
        """Why that backend (the measurement behind ``auto``), recorded with the model."""
        return {}

    def describe(self) -> str:
        return f"{self.provider_name} {self.model_id}"

    def check_dimension(self) -> None:
        """Fail before any write when the provider's vectors differ from ``EXPECTED_VECTOR_DIM``."""
        if self.expected_vector_dim and self.dim != self.expected_vector_dim:
            raise ProviderConfigError(
                f"{self.provider_name} model {self.model_id!r} produces {self.dim}-d vectors but "
                f"EXPECTED_VECTOR_DIM={self.expected_vector_dim}; change the model or the expected dimension"
            )

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        """One image, one call; raises the typed errors of ``types``."""
        raise NotImplementedError

    def billable_requests(self, item: EmbedItem) -> int:
        """How many billable HTTP requests ``embed_image(item)`` sends: the paid stage takes that
        many slots of the shared rate limit for it (``MAX_EMBEDDING_CALLS_PER_MIN`` counts requests)."""
        return 1

    def text_requests(self, count: int) -> int:
        """How many billable requests ``embed_texts`` of ``count`` texts sends (one batched
        request unless the provider says otherwise): the slots a paid text call takes."""
        return 1

    def embed_images(self, items: Sequence[EmbedItem]) -> list[EmbedOutcome]:
        """One outcome per item; per-image problems become outcomes, configuration errors raise."""
        outcomes = []
        for item in items:
            try:
                outcomes.append(self.embed_image(item))
            except (ProviderConfigError, RateLimitedError):
                raise
            except EmbeddingError as exc:
                outcomes.append(EmbedOutcome(item.image_id, error_kind=exc.kind, error=str(exc), usage=exc.usage))
        return outcomes

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        """Vectors for texts in the image space (search), with what they cost."""
        raise ProviderConfigError(f"{self.provider_name} cannot embed text")

    def estimate_cost_per_image(self) -> float:
        return 0.0

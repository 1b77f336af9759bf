"""What flows between the embedding providers and the ``embeddings`` stage: inputs, outcomes,
usage of paid calls and the errors that decide what happens to an image.

Error classes map to what the stage does:

=========================  ===============================================================
``ProviderConfigError``    the run fails with the message (credentials, model cannot load,
                           dimension differs from ``EXPECTED_VECTOR_DIM``); nothing written
``RateLimitedError``       never a failure: the call waits (``Retry-After``) or is
                           rescheduled about 30 s later
``TransientProviderError`` 5xx, timeouts, network, unreadable replies: retried within the
                           call (``PAID_CALL_ATTEMPTS``, jittered backoff), then recorded
                           per image and retried by the queue
``ItemRejectedError``      the provider refuses this image (4xx): recorded, retried by the queue
``BadOutputError``         the call succeeded (and was paid) but the output is unusable:
                           malformed, empty, wrong dimension; recorded, retried by the queue
=========================  ===============================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class EmbedItem:
    """One image to embed, with every form a provider may want it in."""

    image_id: str
    path: str  # the source file
    preview_path: str | None = None  # watermarked preview in the derivative cache (never sent to a paid model)
    thumbnail_path: str | None = None  # upright thumbnail (no watermark) in the derivative cache
    preview_url: str | None = None  # public URL of the uploaded (watermarked) preview, when published
    thumbnail_url: str | None = None  # public URL of the uploaded thumbnail (no watermark), when published
    tags: tuple[str, ...] = ()  # tags already known (OpenAI route: part of the embedded text)
    caption: str | None = None  # caption already paid for (OpenAI route: not asked again)
    journal: CallJournal | None = field(default=None, compare=False, repr=False)  # set by the paid stage


@dataclass(frozen=True)
class PendingCall:
    """A billable request of an earlier, interrupted attempt that was never settled."""

    intent_id: int
    call_id: str | None  # the provider's id (a Replicate prediction), when it was stored
    request_input: dict[str, Any] | None  # what was sent, to find the call again without its id
    age_seconds: float  # how long ago the intent was recorded


class CallJournal(Protocol):
    """Where a paid provider writes down each billable request of an image around sending it
    (``embeddings/intents.py`` implements it on Postgres): an intent committed before the request,
    the provider's id the moment it is known, and how it ended when it ended without an outcome.
    A request whose outcome reaches the stage is settled there, with its cost row."""

    def pending(self, image_id: str, request: str) -> PendingCall | None: ...

    def intend(self, image_id: str, request: str, request_input: dict[str, Any] | None = None) -> int: ...

    def created(self, intent_id: int, call_id: str) -> None: ...

    def unbilled(self, intent_id: int) -> None: ...

    def lost(self, intent_id: int, usage: Usage, image_id: str) -> None: ...


@dataclass
class Usage:
    """What one paid call cost; becomes a row of ``embedding_usage_log``."""

    units: float = 1.0
    unit: str = "call"  # seconds | tokens | call
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float = 0.0
    requests: int = 1  # billable HTTP requests behind it (OpenAI image: a caption + an embedding = 2)

    def __add__(self, other: Usage) -> Usage:
        def both(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            units=self.units + other.units,
            unit=self.unit if self.unit == other.unit else "mixed",
            input_tokens=both(self.input_tokens, other.input_tokens),
            output_tokens=both(self.output_tokens, other.output_tokens),
            cost_usd=self.cost_usd + other.cost_usd,
            requests=self.requests + other.requests,
        )


@dataclass
class EmbedOutcome:
    """The result for one image: a vector, or an error kind and message (never both)."""

    image_id: str
    vector: np.ndarray | None = None
    error_kind: str | None = None
    error: str | None = None
    usage: Usage | None = None  # set when a paid call came back, even if its output was unusable
    caption: str | None = None
    caption_model: str | None = None
    tags: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.vector is not None and self.error_kind is None


class EmbeddingError(Exception):
    """A provider failure. When part of the work was already paid for (a caption before the
    embedding call failed, an unusable output), ``usage`` and the partial results ride along so
    the stage records them before anything else."""

    kind = "provider-error"

    def __init__(self, message: str, *, kind: str | None = None, usage: Usage | None = None) -> None:
        super().__init__(message)
        if kind:
            self.kind = kind
        self.usage = usage
        self.caption: str | None = None
        self.caption_model: str | None = None
        self.tags: list[tuple[str, float]] = []


class ProviderConfigError(EmbeddingError):
    kind = "config"


class RateLimitedError(EmbeddingError):
    kind = "rate-limited"

    def __init__(self, message: str, retry_after: float | None = None, *, usage: Usage | None = None) -> None:
        super().__init__(message, usage=usage)
        self.retry_after = retry_after


class TransientProviderError(EmbeddingError):
    kind = "transient"


class ItemRejectedError(EmbeddingError):
    kind = "rejected"


class BadOutputError(EmbeddingError):
    """A paid call whose output cannot be used (malformed, empty, wrong dimension)."""

    kind = "bad-output"


def normalize(vector: np.ndarray) -> np.ndarray:
    """Unit length (cosine distance is then 1 - dot product); float32."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise BadOutputError("embedding has zero length or non-finite values", kind="malformed-output")
    return vector / norm


def parse_embedding(output: Any, expected_dim: int | None = None) -> np.ndarray:
    """The vector of a provider's output, normalized.

    Accepts the shapes seen in the wild: ``{"embedding": [...]}``, ``[{"embedding": [...]}]``
    and a bare list of numbers. Raises ``BadOutputError`` (kinds ``empty-output``,
    ``malformed-output``, ``wrong-dimension``) for anything else.
    """
    value = output
    if isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict):
        if "embedding" not in value:
            raise BadOutputError(f"output has no 'embedding' key (keys: {sorted(value)[:5]})", kind="malformed-output")
        value = value["embedding"]
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        raise BadOutputError("provider returned an empty embedding", kind="empty-output")
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise BadOutputError(f"embedding is not a list of numbers: {type(value).__name__}", kind="malformed-output")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise BadOutputError("embedding holds non-numeric values", kind="malformed-output")
    vector = np.asarray(value, dtype=np.float32)
    if expected_dim and vector.shape[0] != expected_dim:
        raise BadOutputError(
            f"embedding has {vector.shape[0]} dimensions, expected {expected_dim}", kind="wrong-dimension"
        )
    return normalize(vector)

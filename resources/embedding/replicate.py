"""``replicate``: image vectors from a model hosted on Replicate, through the official client.

``krthr/clip-embeddings`` (the older loader's model, 768-d CLIP ViT-L/14) by default. Sends the
public URL of the uploaded thumbnail (no watermark) when ``IMAGE_BASE_URL`` is set, otherwise
uploads a clean JPEG sized for CLIP through the client's files API. Never the watermarked preview.

Resumable (``replicate_calls``, shared with the caption provider): the prediction is created
without blocking, its id written to the journal of paid calls (``CallJournal``) the moment it
comes back, then polled. A run killed while predictions are running leaves their ids behind; the
next attempt fetches each finished prediction by id instead of buying it again. A create whose
answer was lost is looked up by its input among the recent predictions before it is sent again.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from assemblage_assets.core import settings
from resources.embedding.paid import DEFAULT_TIMEOUT_SECONDS, PaidEmbedding, clean_jpeg
from resources.embedding.replicate_calls import Predictions, make_client, prediction_usage
from resources.embedding.types import (
    BadOutputError,
    EmbedItem,
    EmbedOutcome,
    ItemRejectedError,
    TransientProviderError,
    Usage,
    parse_embedding,
)

DEFAULT_REPLICATE_MODEL = "krthr/clip-embeddings:1c0371070cb827ec3c7f2f28adcdde54b50dcd239aa6faea0bc98b174ef03fb4"
# CLIP ViT-L/14 resizes the short edge to 224 px and centre-crops 224x224: an upload whose short
# edge is 224 px is exactly the model's input (its own resize becomes a no-op) in a JPEG of a few
# tens of KB. Anything larger is thrown away by the model's resize after costing upload time.
# Models with a larger input (the 336 px CLIPs) set REPLICATE_IMAGE_MIN_SIDE.
DEFAULT_UPLOAD_MIN_SIDE = 224
PREDICTION = "prediction"  # the request's name in the journal of paid calls


class ReplicateEmbedding(PaidEmbedding):
    """Image vectors from a model hosted on Replicate (CLIP ViT-L/14 by default)."""

    api_token: str = ""  # REPLICATE_API_TOKEN
    image_model: str = DEFAULT_REPLICATE_MODEL  # REPLICATE_IMAGE_MODEL: owner/name[:version]
    input_key: str = "image"  # REPLICATE_IMAGE_INPUT_KEY
    image_min_side: int = DEFAULT_UPLOAD_MIN_SIDE  # REPLICATE_IMAGE_MIN_SIDE: short edge of uploads
    text_input_key: str = "text"  # REPLICATE_TEXT_INPUT_KEY (search)
    vector_dim: int = 768  # REPLICATE_VECTOR_DIM
    price_per_second: float = 0.000225  # REPLICATE_PRICE_PER_SECOND (predict time)
    price_per_call: float = 0.00025  # REPLICATE_PRICE_PER_CALL (no metrics; estimates)

    provider_name: ClassVar[str] = "replicate"
    resumable_calls: ClassVar[bool] = True
    pool: ClassVar[str] = "replicate"
    kind: ClassVar[str] = "replicate"

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> ReplicateEmbedding:
        return cls(
            api_token=secret("REPLICATE_API_TOKEN"),
            image_model=settings.env_str("REPLICATE_IMAGE_MODEL", DEFAULT_REPLICATE_MODEL),
            input_key=settings.env_str("REPLICATE_IMAGE_INPUT_KEY", "image"),
            image_min_side=settings.env_int("REPLICATE_IMAGE_MIN_SIDE", DEFAULT_UPLOAD_MIN_SIDE),
            text_input_key=settings.env_str("REPLICATE_TEXT_INPUT_KEY", "text"),
            vector_dim=settings.env_int("REPLICATE_VECTOR_DIM", 768),
            base_url=settings.env_str("REPLICATE_BASE_URL"),
            timeout_seconds=settings.env_float("REPLICATE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            price_per_second=settings.env_float("REPLICATE_PRICE_PER_SECOND", 0.000225),
            price_per_call=settings.env_float("REPLICATE_PRICE_PER_CALL", 0.00025),
            **cls.paid_common(common),
        )

    @property
    def model_id(self) -> str:
        return self.image_model

    @property
    def dim(self) -> int:
        return self.vector_dim

    def estimate_cost_per_image(self) -> float:
        return self.price_per_call

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.api_token, self.base_url, self.timeout_seconds)
            return self._client

    def _predictions(self) -> Predictions:
        """Create, resume and poll predictions of ``image_model`` (``replicate_calls``)."""
        return Predictions(self.client, self.image_model, request=PREDICTION, timeout_seconds=self.timeout_seconds,
                           attempts=self.call_attempts, base_seconds=self.retry_base_seconds,
                           lost_usage=Usage(units=1, unit="call", cost_usd=self.price_per_call))

    def _usage(self, prediction: Any) -> Usage:
        return prediction_usage(prediction, self.price_per_second, self.price_per_call)

    def _vector(self, prediction: Any) -> tuple[np.ndarray, Usage]:
        prediction = self._predictions().wait(prediction)
        usage = self._usage(prediction)
        if prediction.status == "failed":
            raise ItemRejectedError(f"replicate prediction failed: {prediction.error}", kind="prediction-failed", usage=usage)
        if prediction.status == "canceled":  # billed for the time it ran
            raise TransientProviderError("replicate prediction was canceled", kind="canceled", usage=usage)
        try:
            return parse_embedding(prediction.output, self.vector_dim), usage
        except BadOutputError as exc:
            exc.usage = usage
            raise

    def _image_input(self, item: EmbedItem) -> str:
        """The URL the model reads: the published thumbnail (clean), else a clean JPEG with its
        short edge at ``image_min_side`` uploaded through the files API (free, so retried)."""
        url = self.public_image_url(item)
        if url is not None:
            return url
        data = io.BytesIO(clean_jpeg(item, min_side=self.image_min_side))
        data.name = f"{item.image_id}.jpg"  # the upload's file name and content type

        def upload() -> Any:
            data.seek(0)
            return self.client().files.create(data)

        return self._predictions().retrying(upload).urls["get"]

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        calls, journal = self._predictions(), item.journal
        prediction = calls.resume(item.image_id, journal) if journal is not None else None
        if prediction is None:
            prediction = calls.create({self.input_key: self._image_input(item)}, item.image_id, journal)
        vector, usage = self._vector(prediction)
        return EmbedOutcome(item.image_id, vector=vector, usage=usage)

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        vectors: list[np.ndarray] = []
        total: Usage | None = None
        calls = self._predictions()
        for text in texts:
            vector, usage = self._vector(calls.create({self.text_input_key: text}, None, None))
            vectors.append(vector)
            total = usage if total is None else total + usage
        return np.stack(vectors), total

    def text_requests(self, count: int) -> int:
        """One prediction per text."""
        return count

"""``replicate``: image vectors from a model hosted on Replicate, through the official client.

``krthr/clip-embeddings`` (the older loader's model, 768-d CLIP ViT-L/14) by default. Sends the
public URL of the uploaded thumbnail (no watermark) when ``IMAGE_BASE_URL`` is set, otherwise
uploads a clean JPEG sized for CLIP through the client's files API. Never the watermarked preview.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from assemblage_assets.core import settings
from resources.embedding.paid import (
    DEFAULT_TIMEOUT_SECONDS,
    PaidEmbedding,
    clean_jpeg,
    env_has,
    retry_after_seconds,
    status_error,
)
from resources.embedding.types import (
    BadOutputError,
    EmbedItem,
    EmbedOutcome,
    ItemRejectedError,
    ProviderConfigError,
    RateLimitedError,
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


def _raise_on_429(response: Any) -> None:
    """httpx response hook: a 429 becomes ``RateLimitedError`` carrying ``Retry-After``."""
    if response.status_code == 429:
        response.read()
        raise RateLimitedError(
            f"replicate rate limit (HTTP 429) on {response.request.method} {response.request.url.path}",
            retry_after_seconds(response.headers),
        )


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
                import httpx
                import replicate

                token = self.api_token or None
                if not token and not env_has("REPLICATE_API_TOKEN"):
                    raise ProviderConfigError("REPLICATE_API_TOKEN is not set")
                self._client = replicate.Client(
                    api_token=token,
                    base_url=self.base_url or None,
                    timeout=httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds)),
                    event_hooks={"response": [_raise_on_429]},
                )
            return self._client

    def _predict(self, payload: dict[str, Any]) -> Any:
        import httpx
        from replicate.exceptions import ReplicateError

        client = self.client()
        ref = self.image_model
        owner_name, _, version = ref.partition(":")
        wait = max(1, min(60, int(self.timeout_seconds)))
        deadline = time.monotonic() + self.timeout_seconds
        prediction = None
        try:
            if version:
                prediction = client.predictions.create(version=version, input=payload, wait=wait)
            else:
                owner, _, name = owner_name.partition("/")
                prediction = client.models.predictions.create(model=(owner, name), input=payload, wait=wait)
            while prediction.status not in ("succeeded", "failed", "canceled"):
                if time.monotonic() >= deadline:
                    raise TransientProviderError(
                        f"replicate prediction {prediction.id} not done after {self.timeout_seconds:g}s", kind="timeout"
                    )
                time.sleep(min(client.poll_interval, max(0.05, deadline - time.monotonic())))
                prediction.reload()
        except TransientProviderError:
            _cancel_quietly(prediction)
            raise
        except ReplicateError as exc:
            raise status_error("replicate", exc.status or 500, exc.detail or exc.title or str(exc)) from None
        except httpx.TimeoutException as exc:
            _cancel_quietly(prediction)
            raise TransientProviderError(f"replicate call timed out after {self.timeout_seconds:g}s: {exc!r}", kind="timeout") from None
        except httpx.TransportError as exc:
            raise TransientProviderError(f"replicate unreachable: {type(exc).__name__}: {exc}", kind="network") from None
        except (ValueError, TypeError) as exc:  # an answer the client cannot parse
            raise TransientProviderError(f"replicate answered something unreadable: {exc}", kind="bad-response") from None
        return prediction

    def _usage(self, prediction: Any) -> Usage:
        seconds = (prediction.metrics or {}).get("predict_time")
        if isinstance(seconds, int | float) and seconds >= 0:
            return Usage(units=float(seconds), unit="seconds", cost_usd=float(seconds) * self.price_per_second)
        return Usage(units=1, unit="call", cost_usd=self.price_per_call)

    def _vector(self, payload: dict[str, Any], image_id: str | None) -> tuple[np.ndarray, Usage]:
        prediction = self._predict(payload)
        usage = self._usage(prediction)
        if prediction.status == "failed":
            raise ItemRejectedError(f"replicate prediction failed: {prediction.error}", kind="prediction-failed", usage=usage)
        if prediction.status == "canceled":
            raise TransientProviderError("replicate prediction was canceled", kind="canceled")
        try:
            return parse_embedding(prediction.output, self.vector_dim), usage
        except BadOutputError as exc:
            exc.usage = usage
            raise

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        value: Any = self.public_image_url(item)  # the published thumbnail (clean)
        if value is None:
            # A clean JPEG (cached thumbnail when big enough, else the source) with its short edge
            # at image_min_side; the client uploads it (files API) and passes its URL.
            value = io.BytesIO(clean_jpeg(item, min_side=self.image_min_side))
            value.name = f"{item.image_id}.jpg"  # the upload's file name and content type
        vector, usage = self._vector({self.input_key: value}, item.image_id)
        return EmbedOutcome(item.image_id, vector=vector, usage=usage)

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        vectors, total = [], Usage(units=0, cost_usd=0.0)
        for text in texts:
            vector, usage = self._vector({self.text_input_key: text}, None)
            vectors.append(vector)
            total = total + usage
        return np.stack(vectors), total


def _cancel_quietly(prediction: Any) -> None:
    if prediction is None:
        return
    try:
        prediction.cancel()
    except Exception:  # noqa: BLE001 - best effort: the call already failed
        pass

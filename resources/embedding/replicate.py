"""``replicate``: image vectors from a model hosted on Replicate, through the official client.

``krthr/clip-embeddings`` (the older loader's model, 768-d CLIP ViT-L/14) by default. Sends the
public URL of the uploaded thumbnail (no watermark) when ``IMAGE_BASE_URL`` is set, otherwise
uploads a clean JPEG sized for CLIP through the client's files API. Never the watermarked preview.

Resumable: the prediction is created without blocking, its id written to the journal of paid
calls (``CallJournal``) the moment it comes back, then polled. A run killed while predictions
are running leaves their ids behind; the next attempt fetches each finished prediction by id
instead of buying it again. A create whose answer was lost is looked up by its input among the
recent predictions before it is sent again.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np

from assemblage_assets.core import settings
from resources.embedding.call_retry import backoff, with_retries
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
    CallJournal,
    EmbeddingError,
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
PREDICTION = "prediction"  # the request's name in the journal of paid calls
# Failures after the create may have reached Replicate: looked up before it is sent again.
AMBIGUOUS_KINDS = frozenset({"timeout", "network", "bad-response"})
FIND_MAX_PAGES = 3


def _raise_on_429(response: Any) -> None:
    """httpx response hook: a 429 becomes ``RateLimitedError`` carrying ``Retry-After``."""
    if response.status_code == 429:
        response.read()
        raise RateLimitedError(
            f"replicate rate limit (HTTP 429) on {response.request.method} {response.request.url.path}",
            retry_after_seconds(response.headers),
        )


def _timeout_hook(seconds: float) -> Callable[[Any], None]:
    """httpx request hook: the client sends a create without ``wait`` with ``timeout=None``
    (no timeout at all); such a request gets the configured one instead."""
    limits = {"connect": min(10.0, seconds), "read": seconds, "write": seconds, "pool": seconds}

    def hook(request: Any) -> None:
        current = request.extensions.get("timeout") or {}
        if all(v is None for v in current.values()):
            request.extensions["timeout"] = dict(limits)

    return hook


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
                import httpx
                import replicate

                token = self.api_token or None
                if not token and not env_has("REPLICATE_API_TOKEN"):
                    raise ProviderConfigError("REPLICATE_API_TOKEN is not set")
                self._client = replicate.Client(
                    api_token=token,
                    base_url=self.base_url or None,
                    timeout=httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds)),
                    event_hooks={"request": [_timeout_hook(self.timeout_seconds)], "response": [_raise_on_429]},
                )
            return self._client

    # ------------------------------------------------------------------ one request

    def _request(self, fn: Callable[[], Any]) -> Any:
        """One HTTP request of the client, its failures as the typed errors (a 429 raises
        ``RateLimitedError`` from the response hook)."""
        import httpx
        from replicate.exceptions import ReplicateError

        try:
            return fn()
        except ReplicateError as exc:
            raise status_error("replicate", exc.status or 500, exc.detail or exc.title or str(exc)) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never sent
            raise TransientProviderError(f"replicate unreachable: {type(exc).__name__}: {exc}", kind="connect") from None
        except httpx.TimeoutException as exc:
            raise TransientProviderError(f"replicate call timed out after {self.timeout_seconds:g}s: {exc!r}", kind="timeout") from None
        except httpx.TransportError as exc:
            raise TransientProviderError(f"replicate connection failed: {type(exc).__name__}: {exc}", kind="network") from None
        except (ValueError, TypeError) as exc:  # an answer the client cannot parse
            raise TransientProviderError(f"replicate answered something unreadable: {exc}", kind="bad-response") from None

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """A request that is safe to repeat (upload, poll, list), tried a few times."""
        return with_retries(lambda: self._request(fn), attempts=self.call_attempts, base_seconds=self.retry_base_seconds)

    # ------------------------------------------------------------------ create, find, wait

    def _send_create(self, payload: dict[str, Any]) -> Any:
        """POST the prediction without waiting for it (no ``Prefer: wait``): its id comes back at
        once and is stored before the model runs."""
        client = self.client()
        owner_name, _, version = self.image_model.partition(":")
        if version:
            return client.predictions.create(version=version, input=payload)
        owner, _, name = owner_name.partition("/")
        return client.models.predictions.create(model=(owner, name), input=payload)

    def _create(self, payload: dict[str, Any], image_id: str | None, journal: CallJournal | None) -> Any:
        """Create the prediction, its intent recorded first and its id right after. A create
        whose answer was lost (timeout, reset, unreadable reply) may have been accepted: before it
        is sent again it is looked up among the recent predictions, so it is never bought twice."""
        intent = journal.intend(image_id, PREDICTION, payload) if journal and image_id else None
        attempt = 1
        while True:
            try:
                prediction = self._request(lambda: self._send_create(payload))
            except TransientProviderError as exc:
                ambiguous = exc.kind in AMBIGUOUS_KINDS
                if ambiguous and intent is not None:
                    found = self._find(payload, max_age_seconds=self.timeout_seconds + 60)
                    if found is not None:
                        journal.created(intent, found.id)  # type: ignore[union-attr]
                        return found
                if attempt >= self.call_attempts or (ambiguous and intent is None):
                    if intent is not None and not ambiguous:
                        journal.unbilled(intent)  # type: ignore[union-attr]
                    raise  # an ambiguous intent stays open: the next attempt looks for it again
                time.sleep(backoff(attempt, self.retry_base_seconds))
                attempt += 1
                continue
            except EmbeddingError:  # 429, 4xx, credentials: refused, nothing was billed
                if intent is not None:
                    journal.unbilled(intent)  # type: ignore[union-attr]
                raise
            if intent is not None:
                journal.created(intent, prediction.id)  # type: ignore[union-attr]
            return prediction

    def _find(self, payload: dict[str, Any], max_age_seconds: float) -> Any:
        """The prediction created for ``payload`` in the last ``max_age_seconds``, if any (the
        list is newest first; a few pages at most)."""
        if not payload:
            return None  # nothing to recognise it by
        client = self.client()
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age_seconds + 60)
        cursor: Any = ...
        for _ in range(FIND_MAX_PAGES):
            page = self._retrying(lambda cursor=cursor: client.predictions.list(cursor))
            for prediction in page.results:
                given = prediction.input or {}
                if all(given.get(k) == v for k, v in payload.items()):
                    return prediction
            oldest = _parse_time(page.results[-1].created_at) if page.results else None
            if not page.next or (oldest is not None and oldest < cutoff):
                return None
            cursor = page.next
        return None

    def _resume(self, image_id: str, journal: CallJournal) -> Any:
        """The prediction an interrupted attempt already paid for: fetched by its id (or found by
        its input when the id was never stored); None when there is none to fetch."""
        pending = journal.pending(image_id, PREDICTION)
        if pending is None:
            return None
        if pending.call_id:
            try:
                return self._retrying(lambda: self.client().predictions.get(pending.call_id))
            except ItemRejectedError:  # gone (expired, deleted): billed, and its result is lost
                journal.lost(pending.intent_id, Usage(units=1, unit="call", cost_usd=self.price_per_call), image_id)
                return None
        found = self._find(pending.request_input or {}, max_age_seconds=pending.age_seconds)
        if found is not None:
            journal.created(pending.intent_id, found.id)
            return found
        journal.unbilled(pending.intent_id)  # the create never reached Replicate
        return None

    def _wait(self, prediction: Any) -> Any:
        """Poll until the prediction ends. Past the timeout it is left running (never canceled):
        its id is stored, and the next attempt fetches the result instead of buying it again."""
        client = self.client()
        deadline = time.monotonic() + self.timeout_seconds
        while prediction.status not in ("succeeded", "failed", "canceled"):
            if time.monotonic() >= deadline:
                raise TransientProviderError(
                    f"replicate prediction {prediction.id} not done after {self.timeout_seconds:g}s", kind="timeout"
                )
            time.sleep(min(client.poll_interval, max(0.05, deadline - time.monotonic())))
            self._retrying(prediction.reload)
        return prediction

    def _usage(self, prediction: Any) -> Usage:
        seconds = (prediction.metrics or {}).get("predict_time")
        if isinstance(seconds, int | float) and seconds >= 0:
            return Usage(units=float(seconds), unit="seconds", cost_usd=float(seconds) * self.price_per_second)
        return Usage(units=1, unit="call", cost_usd=self.price_per_call)

    def _vector(self, prediction: Any) -> tuple[np.ndarray, Usage]:
        prediction = self._wait(prediction)
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

        return self._retrying(upload).urls["get"]

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        journal = item.journal
        prediction = self._resume(item.image_id, journal) if journal is not None else None
        if prediction is None:
            prediction = self._create({self.input_key: self._image_input(item)}, item.image_id, journal)
        vector, usage = self._vector(prediction)
        return EmbedOutcome(item.image_id, vector=vector, usage=usage)

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        vectors, total = [], Usage(units=0, cost_usd=0.0)
        for text in texts:
            vector, usage = self._vector(self._create({self.text_input_key: text}, None, None))
            vectors.append(vector)
            total = total + usage
        return np.stack(vectors), total



def _parse_time(value: str | None) -> datetime | None:
    try:
        when = datetime.fromisoformat((value or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)

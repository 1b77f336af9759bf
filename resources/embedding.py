"""Embedding providers as Dagster resources, chosen by ``EMBEDDING_PROVIDER``.

``EmbeddingResource`` is what assets annotate; ``definitions.py`` builds the subclass from the
environment with ``from_env()``:

- ``local_clip`` (default) - ``LocalClipEmbedding``: sentence-transformers CLIP by name or
  local path (``CLIP_MODEL``, default ``clip-ViT-L-14``, 768-d), CUDA when present, batched,
  normalized; also embeds text (search, zero-shot tags). Loaded once per run in
  ``setup_for_execution``.
- ``replicate`` - ``ReplicateEmbedding``: the official client; ``krthr/clip-embeddings`` (the
  older loader's model, 768-d CLIP ViT-L/14) by default. Sends the public URL of the uploaded
  preview when ``IMAGE_BASE_URL`` is set, otherwise uploads the file.
- ``openai`` - ``OpenAIEmbedding``: OpenAI has no image-embedding endpoint, so an image is
  described by a vision model (a caption plus tags, as JSON) and that text, with the image's
  known tags, is embedded by a text-embedding model. The caption is stored too.

Paid providers raise the typed errors of ``embedding_types`` per call; the stage
(``assemblage_assets/embed.py``) owns concurrency, the shared rate limit, the retry queue and
the cost log.
"""

import base64
import email.utils
import io
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from assemblage_assets import settings
from assemblage_assets.clip_model import DEFAULT_CLIP_MODEL, ClipEncoder, clip_model_id, decode_for_clip
from assemblage_assets.embedding_types import (
    BadOutputError,
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
from assemblage_assets.rate_limit import DEFAULT_PAID_CALLS_PER_MIN
from assemblage_assets.tags import normalize_tags
from assemblage_assets.tiny_clip import TINY_MODEL_WARNING, is_random_checkpoint

PROVIDERS = ("local_clip", "replicate", "openai")
DEFAULT_PROVIDER = "local_clip"
DEFAULT_REPLICATE_MODEL = "krthr/clip-embeddings:1c0371070cb827ec3c7f2f28adcdde54b50dcd239aa6faea0bc98b174ef03fb4"
DEFAULT_OPENAI_VISION_MODEL = "gpt-5.4-mini"
DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-small"
OPENAI_EMBEDDING_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
DEFAULT_TIMEOUT_SECONDS = 120.0
POOLS = {"local_clip": "gpu", "replicate": "replicate", "openai": "openai"}


class EmbeddingResource(dg.ConfigurableResource):
    """A provider of image vectors (and, where it can, text vectors in the same space)."""

    expected_vector_dim: int = 0  # EXPECTED_VECTOR_DIM; 0: accept the provider's dimension
    batch_size: int = 32  # EMBED_BATCH_SIZE
    concurrency: int = 4  # CONCURRENCY: parallel calls of paid providers
    max_calls_per_min: int = 0  # MAX_EMBEDDING_CALLS_PER_MIN; 0: unlimited
    tag_vocabulary: str = ""  # TAG_VOCABULARY (zero-shot tags; local CLIP only)

    provider_name: ClassVar[str] = ""
    paid: ClassVar[bool] = False
    zero_shot_tags: ClassVar[bool] = False

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
    def pool(self) -> str:
        return POOLS[self.provider_name]

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
        """One image, one call; raises the typed errors of ``embedding_types``."""
        raise NotImplementedError

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


# --------------------------------------------------------------------------- local CLIP


class LocalClipEmbedding(EmbeddingResource):
    """sentence-transformers CLIP on this machine: by hub name (``clip-ViT-L-14``) or local path."""

    clip_model: str = DEFAULT_CLIP_MODEL  # CLIP_MODEL
    device: str = ""  # CLIP_DEVICE; empty: CUDA when present, else CPU
    decode_workers: int = 0  # threads decoding images ahead of the model; 0: min(4, cores)

    provider_name: ClassVar[str] = "local_clip"
    zero_shot_tags: ClassVar[bool] = True

    _encoder: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        encoder = self.load()
        if context.log:
            context.log.info(f"loaded CLIP {self.clip_model} ({encoder.dim}-d) on {encoder.device}")
            if is_random_checkpoint(self.clip_model):
                context.log.warning(TINY_MODEL_WARNING)

    def load(self) -> ClipEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = ClipEncoder.load(
                    self.clip_model, device=self.device or None, batch_size=self.batch_size,
                    decode_workers=self.decode_workers,
                )
            return self._encoder

    @property
    def model_id(self) -> str:
        return clip_model_id(self.clip_model)

    @property
    def source(self) -> str:
        path = Path(self.clip_model).expanduser()
        return str(path.resolve()) if path.exists() else self.clip_model

    @property
    def dim(self) -> int:
        return self.load().dim

    def embed_stream(self, items: Iterable[EmbedItem]) -> Iterator[list[EmbedOutcome]]:
        return self.load().embed_stream(items)

    def embed_images(self, items: Sequence[EmbedItem]) -> list[EmbedOutcome]:
        return [o for batch in self.embed_stream(items) for o in batch]

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        (outcome,) = self.embed_images([item])
        if not outcome.ok:
            raise ItemRejectedError(outcome.error or "cannot embed", kind=outcome.error_kind)
        return outcome

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        return self.load().encode_texts(list(texts)), None


# --------------------------------------------------------------------------- HTTP helpers


def retry_after_seconds(headers: Any, default: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``."""
    if headers is None:
        return default
    raw_ms = (headers.get("retry-after-ms") or "").strip()
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return default


def _status_error(provider: str, status: int, detail: str) -> EmbeddingError:
    if status in (401, 403):
        return ProviderConfigError(f"{provider} rejected the credentials (HTTP {status}): {detail}")
    if status == 429:
        return RateLimitedError(f"{provider} rate limit (HTTP 429): {detail}")
    if status >= 500:
        return TransientProviderError(f"{provider} server error (HTTP {status}): {detail}", kind=f"http-{status}")
    return ItemRejectedError(f"{provider} rejected the request (HTTP {status}): {detail}", kind=f"http-{status}")


def _preview_jpeg_data_url(item: EmbedItem, long_edge: int = 512) -> str:
    """A small JPEG of the image as a data URL (what a vision model needs at low detail)."""
    last: Exception | None = None
    for path in (item.preview_path, item.path):
        if not path:
            continue
        try:
            img = decode_for_clip(path, min_side=long_edge)
        except FileNotFoundError as exc:
            last = exc
            continue
        except Exception as exc:  # noqa: BLE001 - undecodable: the image is at fault
            raise ItemRejectedError(f"cannot decode image: {type(exc).__name__}: {exc}", kind="corrupt") from exc
        img.thumbnail((long_edge, long_edge))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    raise ItemRejectedError(f"neither the preview nor the source can be read: {last}", kind="missing-file")


# --------------------------------------------------------------------------- Replicate


def _raise_on_429(response: Any) -> None:
    """httpx response hook: a 429 becomes ``RateLimitedError`` carrying ``Retry-After``."""
    if response.status_code == 429:
        response.read()
        raise RateLimitedError(
            f"replicate rate limit (HTTP 429) on {response.request.method} {response.request.url.path}",
            retry_after_seconds(response.headers),
        )


class PaidEmbedding(EmbeddingResource):
    """What the paid, remote providers share: a lazily built API client, a per-call timeout,
    the public preview URL to send instead of the file, and a default calls-per-minute cap."""

    base_url: str = ""  # REPLICATE_BASE_URL / OPENAI_BASE_URL
    image_base_url: str = ""  # IMAGE_BASE_URL: send the uploaded preview's public URL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # REPLICATE_/OPENAI_TIMEOUT_SECONDS, per call
    max_calls_per_min: int = DEFAULT_PAID_CALLS_PER_MIN

    paid: ClassVar[bool] = True

    _client: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.client()

    def client(self) -> Any:
        raise NotImplementedError


class ReplicateEmbedding(PaidEmbedding):
    """Image vectors from a model hosted on Replicate (CLIP ViT-L/14 by default)."""

    api_token: str = ""  # REPLICATE_API_TOKEN
    image_model: str = DEFAULT_REPLICATE_MODEL  # REPLICATE_IMAGE_MODEL: owner/name[:version]
    input_key: str = "image"  # REPLICATE_IMAGE_INPUT_KEY
    text_input_key: str = "text"  # REPLICATE_TEXT_INPUT_KEY (search)
    vector_dim: int = 768  # REPLICATE_VECTOR_DIM
    price_per_second: float = 0.000225  # REPLICATE_PRICE_PER_SECOND (predict time)
    price_per_call: float = 0.00025  # REPLICATE_PRICE_PER_CALL (no metrics; estimates)

    provider_name: ClassVar[str] = "replicate"

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
                if not token and not _env_has("REPLICATE_API_TOKEN"):
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
            raise _status_error("replicate", exc.status or 500, exc.detail or exc.title or str(exc)) from None
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
        if self.image_base_url and item.preview_url and item.preview_url.startswith(("http://", "https://")):
            value: Any = item.preview_url
        else:
            candidates = [p for p in (item.preview_path, item.path) if p and Path(p).is_file()]
            if not candidates:
                raise ItemRejectedError("neither the preview nor the source file exists", kind="missing-file")
            value = Path(candidates[0])  # the client uploads it (files API) and passes its URL
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


def _env_has(name: str) -> bool:
    return bool(settings.env_str(name))


# --------------------------------------------------------------------------- OpenAI

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

                if not self.api_key and not _env_has("OPENAI_API_KEY"):
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
            raise _status_error("openai", exc.status_code, exc.message) from None
        except openai.APITimeoutError:
            raise TransientProviderError(f"openai call timed out after {self.timeout_seconds:g}s", kind="timeout") from None
        except openai.APIConnectionError as exc:
            raise TransientProviderError(f"openai unreachable: {exc}", kind="network") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise BadOutputError(f"openai answered something unreadable: {exc}", kind="malformed-output") from None

    def _caption(self, item: EmbedItem) -> tuple[str, list[tuple[str, float]], Usage]:
        if self.image_base_url and item.preview_url and item.preview_url.startswith(("http://", "https://")):
            url = item.preview_url
        else:
            url = _preview_jpeg_data_url(item)
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


# --------------------------------------------------------------------------- factory


def provider_from_env() -> str:
    provider = settings.env_str("EMBEDDING_PROVIDER", DEFAULT_PROVIDER).lower().replace("-", "_")
    if provider not in PROVIDERS:
        raise ValueError(f"EMBEDDING_PROVIDER must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    return provider


def from_env(*, secrets_from_dagster: bool = False) -> EmbeddingResource:
    """The provider configured by the environment (see README for every variable).

    ``secrets_from_dagster``: pass API keys as ``dg.EnvVar`` (resolved by Dagster when a run
    starts, never shown in the UI) instead of their values, for the code location.
    """
    provider = provider_from_env()
    common: dict[str, Any] = {
        "expected_vector_dim": settings.env_int("EXPECTED_VECTOR_DIM", 0),
        "batch_size": settings.env_int("EMBED_BATCH_SIZE", 32),
        "concurrency": settings.env_int("CONCURRENCY", 4),
        "tag_vocabulary": settings.env_str("TAG_VOCABULARY"),
    }
    if provider == "local_clip":
        return LocalClipEmbedding(
            clip_model=settings.env_str("CLIP_MODEL", DEFAULT_CLIP_MODEL),
            device=settings.env_str("CLIP_DEVICE"),
            max_calls_per_min=settings.env_int("MAX_EMBEDDING_CALLS_PER_MIN", 0),
            **common,
        )

    def secret(name: str) -> Any:
        if secrets_from_dagster and settings.env_str(name):
            return dg.EnvVar(name)
        return settings.env_str(name)

    paid_common = {
        **common,
        "max_calls_per_min": settings.env_int("MAX_EMBEDDING_CALLS_PER_MIN", DEFAULT_PAID_CALLS_PER_MIN),
        "image_base_url": settings.env_str("IMAGE_BASE_URL"),
    }
    if provider == "replicate":
        return ReplicateEmbedding(
            api_token=secret("REPLICATE_API_TOKEN"),
            image_model=settings.env_str("REPLICATE_IMAGE_MODEL", DEFAULT_REPLICATE_MODEL),
            input_key=settings.env_str("REPLICATE_IMAGE_INPUT_KEY", "image"),
            text_input_key=settings.env_str("REPLICATE_TEXT_INPUT_KEY", "text"),
            vector_dim=settings.env_int("REPLICATE_VECTOR_DIM", 768),
            base_url=settings.env_str("REPLICATE_BASE_URL"),
            timeout_seconds=settings.env_float("REPLICATE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            price_per_second=settings.env_float("REPLICATE_PRICE_PER_SECOND", 0.000225),
            price_per_call=settings.env_float("REPLICATE_PRICE_PER_CALL", 0.00025),
            **paid_common,
        )
    return OpenAIEmbedding(
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
        **paid_common,
    )


def active_model_id() -> str:
    """The model id the environment selects, without loading anything (sensors, schedules)."""
    return from_env().model_id


def active_pool() -> str:
    return POOLS[provider_from_env()]

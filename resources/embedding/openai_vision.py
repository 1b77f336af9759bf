"""The OpenAI vision request both OpenAI routes send: one chat completion that describes a photo
as JSON (a caption and tags), its error mapping and its cost. Used by the ``openai`` embedding
provider (caption + tags, then a text embedding) and by the ``openai`` caption provider
(``resources/caption/openai.py``), so a caption bought by either is the same text under the same
model id (``openai:<vision model>``) and is never bought twice.

``journaled_send`` is how both send a billable request: its intent committed to the journal of
paid calls before it goes out, retried within the call on a 5xx, a reset or an unreadable reply.
OpenAI gives no id to fetch a lost answer by, so a try that may have been billed without its
answer being seen is logged as a billed, lost call at once (and an intent a killed run left open
is swept as lost by the stage): the cost log never under-counts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from assemblage_assets.core.tags import normalize_tags
from resources.embedding.call_retry import backoff
from resources.embedding.paid import env_has, retry_after_seconds, status_error
from resources.embedding.types import (
    BadOutputError,
    CallJournal,
    EmbeddingError,
    ProviderConfigError,
    RateLimitedError,
    TransientProviderError,
    Usage,
)

DEFAULT_OPENAI_VISION_MODEL = "gpt-5.4-mini"
# Failed tries that may still have been billed (the request was sent, no answer was seen).
AMBIGUOUS_KINDS = frozenset({"timeout", "network", "bad-response"})

CAPTION_INSTRUCTIONS = (
    "Describe the photo for a search index. Answer with JSON only: "
    '{"caption": "<one factual sentence: main subjects, setting, colours, visible text>", '
    '"tags": ["<up to 10 short lowercase nouns or noun phrases>"]}'
)


def caption_model_id(vision_model: str) -> str:
    """What ``images.caption_model`` holds for a caption of ``vision_model``."""
    return f"openai:{vision_model}"


def make_client(api_key: str, base_url: str, timeout_seconds: float) -> Any:
    """The official client; retries are the stage's (rate limit, Retry-After, the queues)."""
    import openai

    if not api_key and not env_has("OPENAI_API_KEY"):
        raise ProviderConfigError("OPENAI_API_KEY is not set")
    return openai.OpenAI(api_key=api_key or None, base_url=base_url or None, timeout=timeout_seconds, max_retries=0)


def call(fn: Any, timeout_seconds: float, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` with the client's errors mapped to the typed errors of ``types``."""
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
        raise TransientProviderError(f"openai call timed out after {timeout_seconds:g}s", kind="timeout") from None
    except openai.APIConnectionError as exc:
        # "connect": never sent, so never billed; "network" (a reset mid-request) may have been
        never_sent = type(exc.__cause__).__name__ in ("ConnectError", "ConnectTimeout")
        raise TransientProviderError(f"openai unreachable: {exc}", kind="connect" if never_sent else "network") from None
    except (ValueError, TypeError, KeyError) as exc:  # a reply that is not JSON: transient (issue 14, item 6)
        raise TransientProviderError(f"openai answered something unreadable: {exc}", kind="bad-response") from None


def journaled_send(
    journal: CallJournal | None, image_id: str | None, request: str, *, lost_usage: Usage, attempts: int,
    base_seconds: float,
) -> Callable[..., Any]:
    """A ``send`` (same signature as ``call``) for one image's billable request named ``request``:
    an intent committed before each try (when ``journal`` is set), tried up to ``attempts`` times
    on a transient failure. A try that may have been billed (no answer seen: timeout, reset,
    unreadable reply) is logged as lost at ``lost_usage`` before the next; a refused one
    (5xx/429/4xx reply, no connection) is unbilled. An answered request's intent stays open until
    the stage settles it with its cost row."""

    def send(fn: Any, timeout_seconds: float, **kwargs: Any) -> Any:
        attempt = 1
        while True:
            intent = journal.intend(image_id, request) if journal is not None and image_id else None
            try:
                return call(fn, timeout_seconds, **kwargs)
            except TransientProviderError as exc:
                ambiguous = exc.kind in AMBIGUOUS_KINDS
                if intent is not None:
                    if ambiguous:
                        journal.lost(intent, lost_usage, image_id)  # type: ignore[union-attr, arg-type]
                    else:
                        journal.unbilled(intent)  # type: ignore[union-attr]
                if attempt >= max(1, attempts) or (ambiguous and intent is None):
                    raise  # without a journal an ambiguous try is not repeated: it may have been billed
                time.sleep(backoff(attempt, base_seconds))
                attempt += 1
            except EmbeddingError:
                if intent is not None:
                    journal.unbilled(intent)  # type: ignore[union-attr]
                raise

    return send


def chat_usage(response: Any, price_input_per_mtok: float, price_output_per_mtok: float) -> Usage:
    usage = getattr(response, "usage", None)
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = (prompt * price_input_per_mtok + completion * price_output_per_mtok) / 1e6
    return Usage(units=prompt + completion, unit="tokens", input_tokens=prompt, output_tokens=completion, cost_usd=cost)


def describe(
    client: Any, image_url: str, *, vision_model: str, detail: str, timeout_seconds: float,
    price_input_per_mtok: float, price_output_per_mtok: float, send: Any = None,
) -> tuple[str, list[tuple[str, float]], Usage]:
    """(caption, normalized tags, usage) of one image (a public URL or a data URL). A reply that
    came back but cannot be used raises ``BadOutputError`` carrying its usage: it was billed.
    ``send`` (same signature as ``call``) sends the request instead: the embedding provider's
    journaled, retrying request."""
    response = (send or call)(
        client.chat.completions.create, timeout_seconds,
        model=vision_model,
        messages=[{
            "role": "user",
            "content": [
                {"type": "text", "text": CAPTION_INSTRUCTIONS},
                {"type": "image_url", "image_url": {"url": image_url, "detail": detail}},
            ],
        }],
        response_format={"type": "json_object"},
        max_completion_tokens=400,
    )
    usage = chat_usage(response, price_input_per_mtok, price_output_per_mtok)
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

"""The life of one paid Replicate prediction, journaled (issue 14, item 2): shared by the
``replicate`` embedding provider and the ``replicate`` caption provider.

The prediction is created without blocking (no ``Prefer: wait``), its intent committed to the
journal of paid calls (``CallJournal``) before the create and its id the moment the create
answers, then it is polled. A run killed while predictions run leaves their ids behind; the
next attempt (``resume``) fetches each by id instead of buying it again. A create whose answer
was lost (kill, timeout, reset, unreadable reply) is looked up by its input among the recent
predictions before it is sent again. Past the timeout a prediction is left running, never
canceled: its id is stored and the next attempt fetches the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from resources.embedding.call_retry import backoff, with_retries
from resources.embedding.paid import env_has, retry_after_seconds, status_error
from resources.embedding.types import (
    CallJournal,
    EmbeddingError,
    ItemRejectedError,
    ProviderConfigError,
    RateLimitedError,
    TransientProviderError,
    Usage,
)

# Failures after the create may have reached Replicate: looked up before it is sent again.
AMBIGUOUS_KINDS = frozenset({"timeout", "network", "bad-response"})
FIND_MAX_PAGES = 3


def raise_on_429(response: Any) -> None:
    """httpx response hook: a 429 becomes ``RateLimitedError`` carrying ``Retry-After``."""
    if response.status_code == 429:
        response.read()
        raise RateLimitedError(
            f"replicate rate limit (HTTP 429) on {response.request.method} {response.request.url.path}",
            retry_after_seconds(response.headers),
        )


def timeout_hook(seconds: float) -> Callable[[Any], None]:
    """httpx request hook: the client sends a create without ``wait`` with ``timeout=None``
    (no timeout at all); such a request gets the configured one instead."""
    limits = {"connect": min(10.0, seconds), "read": seconds, "write": seconds, "pool": seconds}

    def hook(request: Any) -> None:
        current = request.extensions.get("timeout") or {}
        if all(v is None for v in current.values()):
            request.extensions["timeout"] = dict(limits)

    return hook


def make_client(api_token: str, base_url: str, timeout_seconds: float) -> Any:
    """The official client with a timeout on every request and 429s as ``RateLimitedError``."""
    import httpx
    import replicate

    if not api_token and not env_has("REPLICATE_API_TOKEN"):
        raise ProviderConfigError("REPLICATE_API_TOKEN is not set")
    return replicate.Client(
        api_token=api_token or None,
        base_url=base_url or None,
        timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
        event_hooks={"request": [timeout_hook(timeout_seconds)], "response": [raise_on_429]},
    )


def prediction_usage(prediction: Any, price_per_second: float, price_per_call: float) -> Usage:
    """What a finished prediction cost: its ``predict_time`` at the price per second, else the
    estimated price of a call."""
    seconds = (prediction.metrics or {}).get("predict_time")
    if isinstance(seconds, int | float) and seconds >= 0:
        return Usage(units=float(seconds), unit="seconds", cost_usd=float(seconds) * price_per_second)
    return Usage(units=1, unit="call", cost_usd=price_per_call)


class Predictions:
    """Create, find, resume and wait for predictions of one model (``owner/name[:version]``),
    journaled under the request name ``request`` (``prediction`` for vectors, ``caption``)."""

    def __init__(self, client: Callable[[], Any], model: str, *, request: str, timeout_seconds: float,
                 attempts: int, base_seconds: float, lost_usage: Usage) -> None:
        self.client, self.model, self.request_name = client, model, request
        self.timeout_seconds, self.attempts, self.base_seconds = timeout_seconds, attempts, base_seconds
        self.lost_usage = lost_usage  # what a prediction whose result is gone is assumed to cost

    # ------------------------------------------------------------------ one request

    def request(self, fn: Callable[[], Any]) -> Any:
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

    def retrying(self, fn: Callable[[], Any]) -> Any:
        """A request that is safe to repeat (upload, poll, list), tried a few times."""
        return with_retries(lambda: self.request(fn), attempts=self.attempts, base_seconds=self.base_seconds)

    # ------------------------------------------------------------------ create, find, resume, wait

    def _send_create(self, payload: dict[str, Any]) -> Any:
        """POST the prediction without waiting for it (no ``Prefer: wait``): its id comes back at
        once and is stored before the model runs."""
        client = self.client()
        owner_name, _, version = self.model.partition(":")
        if version:
            return client.predictions.create(version=version, input=payload)
        owner, _, name = owner_name.partition("/")
        return client.models.predictions.create(model=(owner, name), input=payload)

    def create(self, payload: dict[str, Any], image_id: str | None, journal: CallJournal | None) -> Any:
        """Create the prediction, its intent recorded first and its id right after. A create
        whose answer was lost (timeout, reset, unreadable reply) may have been accepted: before it
        is sent again it is looked up among the recent predictions, so it is never bought twice."""
        intent = journal.intend(image_id, self.request_name, payload) if journal and image_id else None
        attempt = 1
        while True:
            try:
                prediction = self.request(lambda: self._send_create(payload))
            except TransientProviderError as exc:
                ambiguous = exc.kind in AMBIGUOUS_KINDS
                if ambiguous and intent is not None:
                    found = self.find(payload, max_age_seconds=self.timeout_seconds + 60)
                    if found is not None:
                        journal.created(intent, found.id)  # type: ignore[union-attr]
                        return found
                if attempt >= self.attempts or (ambiguous and intent is None):
                    if intent is not None and not ambiguous:
                        journal.unbilled(intent)  # type: ignore[union-attr]
                    raise  # an ambiguous intent stays open: the next attempt looks for it again
                time.sleep(backoff(attempt, self.base_seconds))
                attempt += 1
                continue
            except EmbeddingError:  # 429, 4xx, credentials: refused, nothing was billed
                if intent is not None:
                    journal.unbilled(intent)  # type: ignore[union-attr]
                raise
            if intent is not None:
                journal.created(intent, prediction.id)  # type: ignore[union-attr]
            return prediction

    def find(self, payload: dict[str, Any], max_age_seconds: float) -> Any:
        """The prediction created for ``payload`` in the last ``max_age_seconds``, if any (the
        list is newest first; a few pages at most)."""
        if not payload:
            return None  # nothing to recognise it by
        client = self.client()
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age_seconds + 60)
        cursor: Any = ...
        for _ in range(FIND_MAX_PAGES):
            page = self.retrying(lambda cursor=cursor: client.predictions.list(cursor))
            for prediction in page.results:
                given = prediction.input or {}
                if all(given.get(k) == v for k, v in payload.items()):
                    return prediction
            oldest = _parse_time(page.results[-1].created_at) if page.results else None
            if not page.next or (oldest is not None and oldest < cutoff):
                return None
            cursor = page.next
        return None

    def resume(self, image_id: str, journal: CallJournal) -> Any:
        """The prediction an interrupted attempt already paid for: fetched by its id (or found by
        its input when the id was never stored); None when there is none to fetch."""
        pending = journal.pending(image_id, self.request_name)
        if pending is None:
            return None
        if pending.call_id:
            try:
                return self.retrying(lambda: self.client().predictions.get(pending.call_id))
            except ItemRejectedError:  # gone (expired, deleted): billed, and its result is lost
                journal.lost(pending.intent_id, self.lost_usage, image_id)
                return None
        found = self.find(pending.request_input or {}, max_age_seconds=pending.age_seconds)
        if found is not None:
            journal.created(pending.intent_id, found.id)
            return found
        journal.unbilled(pending.intent_id)  # the create never reached Replicate
        return None

    def wait(self, prediction: Any) -> Any:
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
            self.retrying(prediction.reload)
        return prediction


def _parse_time(value: str | None) -> datetime | None:
    try:
        when = datetime.fromisoformat((value or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)

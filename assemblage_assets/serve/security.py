"""Who may use the service and how often: the token (bearer, basic auth or the login form's
cookie), a per-client rate limit, and the rule that a non-loopback bind needs a token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import threading
import time

from starlette.requests import Request

SESSION_COOKIE = "assemblage_session"


class ConfigError(ValueError):
    pass


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_off_loopback(host: str, token: str) -> None:
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"binding {host} (not a loopback address) needs ASSEMBLAGE_API_TOKEN: the catalogue would be open "
            "to the network")


def session_value(token: str) -> str:
    """What the login cookie holds: derived from the token, so the token itself never sits in a cookie."""
    return hmac.new(token.encode(), b"assemblage-session-v1", hashlib.sha256).hexdigest()


def authorized(request: Request, token: str) -> bool:
    if not token:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return True
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


class RateLimiter:
    """A token bucket per client address: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        if self.capacity <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                if len(self._buckets) > 10_000:  # forget idle clients: bounded memory
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
                return 0.0
            self._buckets[client] = (tokens, now)
            return max(1.0, math.ceil((1 - tokens) / self.rate))


def secrets_equal(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())

"""The SSRF guard of the image fetcher: which addresses may be contacted, checked where the
socket is opened (a network backend that resolves, vets and connects to the vetted IP itself),
so DNS rebinding between check and connect is impossible and every redirect hop passes it."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """A URL that yielded no image; ``kind`` is machine-readable, the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self}"


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be contacted (loopback, private, ...), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 embedded in IPv6 (::ffff:a.b.c.d, 6to4) reaches the IPv4 address: judge that one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal_reason(embedded)
        if address.teredo is not None:
            return "teredo tunnel"
        if address.is_site_local:
            return "site-local"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def bare_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks exempt from the address check (``FETCH_ALLOW_HOSTS``)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> AllowList:
        """``"127.0.0.1, 10.0.0.0/8, images.internal"``: IPs, CIDRs and exact host names."""
        entries = spec.split(",") if isinstance(spec, str) else spec
        hosts, networks = set(), []
        for raw in entries:
            entry = bare_host(raw)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return bare_host(host) in self.hosts or any(address in net for net in self.networks)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


class AddressGuard:
    """Resolves a host and returns its addresses only if every one of them may be contacted."""

    def __init__(self, allow: AllowList, resolver: Resolver = system_resolver) -> None:
        self.allow = allow
        self._resolver = resolver

    def vetted_addresses(self, host: str, port: int) -> list[str]:
        bare = bare_host(host)
        try:
            found = self._resolver(bare, port)
        except (OSError, UnicodeError) as exc:
            raise FetchError("dns-error", f"cannot resolve {bare}: {exc}") from None
        if not found:
            raise FetchError("dns-error", f"{bare} resolves to no address")
        for text in found:
            address = ipaddress.ip_address(text)
            reason = refusal_reason(address)
            # One refused address refuses the host: a resolver answer mixing public and
            # internal addresses is exactly what a rebinding attack looks like.
            if reason and not self.allow.allows(bare, address):
                shown = bare if bare == text else f"{bare} ({text})"
                raise FetchError("refused-address", f"{shown} is {reason}; not fetched (FETCH_ALLOW_HOSTS)")
        return found


class _VettedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend behind the guard: connects only to the addresses it vetted."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._tcp = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in self._guard.vetted_addresses(host, port):
            try:
                return self._tcp.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:  # e.g. ::1 first while the server listens on IPv4
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        raise FetchError("refused-address", "unix sockets are never fetched")

    def sleep(self, seconds: float) -> None:
        self._tcp.sleep(seconds)


class VettedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool opens sockets through ``_VettedBackend``.

    httpx does not expose httpcore's ``network_backend``; the pool is rebuilt with it (httpx is
    pinned below 0.29 for this). No proxies: environment proxies would bypass the guard.
    """

    def __init__(self, guard: AddressGuard, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=_VettedBackend(guard),
        )

"""The safe downloader against a local server on 127.0.0.1.

Traffic goes to loopback only: the server listens on 127.0.0.1, refused targets are loopback
addresses outside the allow list (refused before any connection), and private or reserved
ranges are checked on literal addresses by the classifier, never contacted.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from collections.abc import Iterator

import pytest
from PIL import Image
from support.bigtiff import bigtiff_bytes
from support.image_server import ImageServer, make_jpeg

from resources.image_fetch.client import (
    DEFAULT_MAX_BYTES,
    FetchSettings,
    ImageFetcher,
    validate_image,
)
from resources.image_fetch.guard import AddressGuard, AllowList, FetchError, refusal_reason

LOOPBACK_ONLY = FetchSettings(
    allow_hosts="127.0.0.1",
    connect_timeout=2.0,
    read_timeout=0.5,
    total_timeout=5.0,
    max_bytes=200_000,
    max_redirects=3,
)


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def fetcher() -> Iterator[ImageFetcher]:
    with ImageFetcher(LOOPBACK_ONLY) as f:
        yield f


def _fails(fetcher: ImageFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(url)
    return info.value


# --- address classification (literal addresses, nothing is contacted) ---------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("172.31.255.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo tunnel"),
        ("fec0::1", "site-local"),
    ],
)
def test_internal_addresses_are_refused(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.1"])
def test_public_addresses_pass_the_classifier(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_allow_list_takes_hosts_ips_and_cidrs() -> None:
    allow = AllowList.parse(" 127.0.0.1, 10.0.0.0/8 ,Images.Internal., [::1]")
    assert allow.allows("anything", ipaddress.ip_address("127.0.0.1"))
    assert not allow.allows("anything", ipaddress.ip_address("127.0.0.2"))
    assert allow.allows("x", ipaddress.ip_address("10.200.3.4"))
    assert allow.allows("x", ipaddress.ip_address("::1"))
    assert allow.allows("images.internal", ipaddress.ip_address("192.168.0.9"))
    assert not allow.allows("other.internal", ipaddress.ip_address("192.168.0.9"))
    assert AllowList.parse("") == AllowList()


def test_guard_refuses_a_host_when_any_of_its_addresses_is_refused() -> None:
    guard = AddressGuard(AllowList.parse("127.0.0.1"), resolver=lambda host, port: ["127.0.0.1", "127.0.0.2"])
    with pytest.raises(FetchError) as info:
        guard.vetted_addresses("mixed.example", 80)
    assert info.value.kind == "refused-address" and "127.0.0.2" in str(info.value)


def test_default_settings() -> None:
    s = FetchSettings()
    assert s.max_bytes == DEFAULT_MAX_BYTES == 25 * 1024 * 1024
    assert s.allow_hosts == "" and s.max_redirects == 5


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCH_ALLOW_HOSTS", "127.0.0.1")
    monkeypatch.setenv("FETCH_MAX_BYTES", "1000")
    monkeypatch.setenv("FETCH_READ_TIMEOUT", "2.5")
    s = FetchSettings.from_env()
    assert (s.allow_hosts, s.max_bytes, s.read_timeout, s.connect_timeout) == ("127.0.0.1", 1000, 2.5, 5.0)


# --- downloads from the loopback server ----------------------------------------------------------


def test_fetches_real_images(server: ImageServer, fetcher: ImageFetcher) -> None:
    jpeg = fetcher.fetch(server.url("/img/1.jpg"))
    assert (jpeg.format, jpeg.ext, jpeg.width, jpeg.height) == ("JPEG", "jpg", 640, 480)
    assert jpeg.body == server.image(1) and len(jpeg.sha256) == 64
    png = fetcher.fetch(server.url("/img/2.png"))
    assert (png.format, png.ext) == ("PNG", "png")


def test_ssrf_guard_refuses_loopback_unless_allow_listed(server: ImageServer) -> None:
    before = len(server.requests)
    with ImageFetcher(FetchSettings(connect_timeout=1, read_timeout=1)) as strict:
        for url in (
            server.url("/img/1.jpg"),
            server.url("/img/1.jpg", host="localhost"),
            f"http://[::1]:{server.port}/x",
        ):
            error = _fails(strict, url)
            assert error.kind == "refused-address" and "loopback" in str(error)
    assert len(server.requests) == before  # refused before connecting


def test_allow_listed_host_name(server: ImageServer) -> None:
    with ImageFetcher(FetchSettings(allow_hosts="localhost")) as f:
        assert f.fetch(server.url("/img/3.jpg", host="localhost")).width == 640
        assert _fails(f, server.url("/img/3.jpg")).kind == "refused-address"  # the IP is not the name


def test_connection_is_pinned_to_the_vetted_address_and_keeps_the_host_header(server: ImageServer) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    with ImageFetcher(LOOPBACK_ONLY, resolver=resolver) as f:
        image = f.fetch(f"http://listing-images.example:{server.port}/img/4.jpg")
    assert image.width == 640
    assert calls == ["listing-images.example"]
    assert server.requests[-1] == ("/img/4.jpg", f"listing-images.example:{server.port}")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/status/404", "http-error"),
        ("/status/500", "http-error"),
        ("/html-as-image.jpg", "not-an-image"),
        ("/huge-declared.jpg", "too-large"),
        ("/huge-streamed.jpg", "too-large"),
        ("/loop/a", "redirect-loop"),
        ("/chain/10", "too-many-redirects"),
        ("/redirect?to=http://[::1/x", "protocol-error"),  # unparsable Location
    ],
)
def test_bad_urls_fail_with_a_reason(server: ImageServer, fetcher: ImageFetcher, path: str, kind: str) -> None:
    error = _fails(fetcher, server.url(path))
    assert error.kind == kind, error.reason


def test_html_posing_as_an_image_names_the_claimed_type(server: ImageServer, fetcher: ImageFetcher) -> None:
    assert "served as image/jpeg" in str(_fails(fetcher, server.url("/html-as-image.jpg")))


def test_slow_response_times_out(server: ImageServer, fetcher: ImageFetcher) -> None:
    started = time.monotonic()
    error = _fails(fetcher, server.url("/slow/3"))
    assert error.kind == "timeout"
    assert time.monotonic() - started < 2


def test_redirects_are_followed_up_to_the_limit(server: ImageServer, fetcher: ImageFetcher) -> None:
    image = fetcher.fetch(server.url("/chain/3"))
    assert image.final_url == server.url("/chain/0") and image.url == server.url("/chain/3")


def test_redirect_into_a_refused_address_is_not_followed(server: ImageServer, fetcher: ImageFetcher) -> None:
    before = len(server.requests)
    for target in (
        f"http://127.0.0.2:{server.port}/img/1.jpg",  # loopback, outside the allow list
        f"http://[::1]:{server.port}/img/1.jpg",
        "file:///etc/passwd",
    ):
        error = _fails(fetcher, server.url(f"/redirect?to={target}"))
        assert error.kind in ("refused-address", "refused-scheme"), error.reason
    assert [p for p in server.paths()[before:] if not p.startswith("/redirect")] == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("ftp://127.0.0.1/a.jpg", "refused-scheme"),
        ("file:///etc/passwd", "refused-scheme"),
        ("gopher://127.0.0.1/", "refused-scheme"),
        ("/relative/only.jpg", "refused-scheme"),
        ("http://user:secret@127.0.0.1/a.jpg", "invalid-url"),
        ("http:///nohost", "invalid-url"),
    ],
)
def test_malformed_and_non_http_urls_are_refused(fetcher: ImageFetcher, url: str, kind: str) -> None:
    assert _fails(fetcher, url).kind == kind


def test_dns_failure() -> None:
    def resolver(host: str, port: int) -> list[str]:  # no real lookup: it would leave loopback
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with ImageFetcher(LOOPBACK_ONLY, resolver=resolver) as f:
        assert _fails(f, "http://no-such-host.invalid/a.jpg").kind == "dns-error"


def test_per_host_concurrency_is_bounded(server: ImageServer) -> None:
    settings = FetchSettings(allow_hosts="127.0.0.1", per_host=2, workers=6)
    server.max_in_flight = 0
    with ImageFetcher(settings) as f:
        results = dict(f.fetch_many([server.url(f"/polite/{n}.jpg") for n in range(8)]))
    assert sorted(results) == list(range(8))
    assert all(not isinstance(r, FetchError) for r in results.values())
    assert server.max_in_flight == 2


def test_fetch_many_reports_failures_in_place(server: ImageServer, fetcher: ImageFetcher) -> None:
    results = dict(fetcher.fetch_many([server.url("/img/5.jpg"), server.url("/status/404"), "ftp://x/y"]))
    assert results[0].width == 640
    assert (results[1].kind, results[2].kind) == ("http-error", "refused-scheme")


def test_validate_image_uses_magic_bytes_and_pillow() -> None:
    assert validate_image(make_jpeg(1), 10**8)[:2] == ("JPEG", "jpg")
    with pytest.raises(FetchError) as info:
        validate_image(b"GIF89a" + b"\0" * 30, 10**8)
    assert info.value.kind == "unsupported-format"
    with pytest.raises(FetchError) as info:
        validate_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, 10**8)
    assert info.value.kind == "corrupt"
    with pytest.raises(FetchError) as info:
        validate_image(make_jpeg(1), 1000)
    assert info.value.kind == "too-many-pixels"


def test_validate_image_accepts_bigtiff() -> None:
    """BigTIFF (magic ``II+\\0``) is a TIFF: accepted like any other, published as ``.tiff``."""
    img = Image.new("RGB", (96, 64), (20, 140, 90))
    buf = io.BytesIO()
    img.save(buf, "TIFF", big_tiff=True)
    for body in (buf.getvalue(), bigtiff_bytes(img, "II")):
        assert body[:4] == b"II+\x00"
        assert validate_image(body, 10**8, "image/tiff") == ("TIFF", "tiff", 96, 64)

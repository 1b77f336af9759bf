"""Downloads from the open web (listing images): limits and the SSRF allow list."""

import dataclasses

import dagster as dg
from pydantic import Field

from assemblage_assets.core import settings
from resources.image_fetch.client import DEFAULT_MAX_BYTES, USER_AGENT, FetchSettings, ImageFetcher


class ImageFetchResource(dg.ConfigurableResource):
    """Settings of the safe image downloader (``resources.image_fetch.client``); ``from_env`` reads
    the ``FETCH_*`` variables."""

    allow_hosts: str = Field(
        default="",
        description="Hosts or CIDRs exempt from the SSRF address check, comma-separated (FETCH_ALLOW_HOSTS).",
    )
    connect_timeout: float = Field(default=5.0, description="Seconds to connect (FETCH_CONNECT_TIMEOUT).")
    read_timeout: float = Field(default=20.0, description="Seconds between bytes (FETCH_READ_TIMEOUT).")
    total_timeout: float = Field(default=60.0, description="Seconds for a whole download (FETCH_TOTAL_TIMEOUT).")
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, description="Largest body accepted (FETCH_MAX_BYTES).")
    max_redirects: int = Field(default=5, description="Redirects followed per URL (FETCH_MAX_REDIRECTS).")
    per_host: int = Field(default=2, description="Requests in flight per host (FETCH_PER_HOST_CONCURRENCY).")
    workers: int = Field(default=4, description="Downloads in flight in one run (FETCH_WORKERS).")
    max_pixels: int = Field(default=settings.DEFAULT_MAX_IMAGE_PIXELS, description="Largest image (MAX_IMAGE_PIXELS).")
    user_agent: str = Field(default=USER_AGENT, description="User-Agent header (FETCH_USER_AGENT).")

    @classmethod
    def from_env(cls) -> "ImageFetchResource":
        return cls(**dataclasses.asdict(FetchSettings.from_env()))

    def fetch_settings(self) -> FetchSettings:
        return FetchSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FetchSettings)})

    def fetcher(self) -> ImageFetcher:
        """A new fetcher (its own connection pool and per-host limits); close it after the run."""
        return ImageFetcher(self.fetch_settings())

"""Settings of ``assemblage serve`` (environment variables, all documented in README)."""

from __future__ import annotations

from dataclasses import dataclass

from assemblage_assets.core import settings
from assemblage_assets.serve.security import ConfigError
from resources import object_store


@dataclass(frozen=True)
class ServeConfig:
    token: str = ""  # ASSEMBLAGE_API_TOKEN
    rate_limit_per_minute: int = 600  # SERVE_RATE_LIMIT (per client address; 0 = off)
    cors_origins: tuple[str, ...] = ()  # SERVE_CORS_ORIGINS (comma-separated; empty = CORS off)
    max_upload_bytes: int = 25 * 1024 * 1024  # SERVE_MAX_UPLOAD_BYTES
    max_query_chars: int = 500  # SERVE_MAX_QUERY_CHARS
    max_page_size: int = 100  # SERVE_MAX_PAGE_SIZE
    max_depth: int = 1000  # SERVE_MAX_DEPTH: how far search results page (offset + page)
    ef_search: int | None = None  # SEARCH_EF_SEARCH (embeddings.search.default_ef_search when unset)
    # Where publishing put thumbnails and previews (object_store.from_env: R2_BUCKET/S3_BUCKET, R2_PREFIX,
    # else OBJECT_STORE_DIR): a bucket is answered with presigned URLs, a local store with its files.
    # None: only the derivative cache is served.
    store: object_store.ObjectStore | None = None
    presign_seconds: int = 3600  # SERVE_PRESIGN_SECONDS: lifetime of a presigned media URL
    derivative_cache_dir: str = ""  # ASSEMBLAGE_HOME/derivatives: thumbnails before publishing

    @classmethod
    def from_env(cls) -> ServeConfig:
        paths = settings.Paths.from_env()
        ef = settings.env_int("SEARCH_EF_SEARCH", 0)
        presign = settings.env_int("SERVE_PRESIGN_SECONDS", 3600)
        if not 1 <= presign <= object_store.MAX_PRESIGN_SECONDS:
            raise ConfigError(f"SERVE_PRESIGN_SECONDS must be 1 to {object_store.MAX_PRESIGN_SECONDS} (7 days), "
                              f"got {presign}")
        return cls(
            token=settings.env_str("ASSEMBLAGE_API_TOKEN"),
            rate_limit_per_minute=settings.env_int("SERVE_RATE_LIMIT", 600),
            cors_origins=tuple(o.strip() for o in settings.env_str("SERVE_CORS_ORIGINS").split(",") if o.strip()),
            max_upload_bytes=settings.env_int("SERVE_MAX_UPLOAD_BYTES", 25 * 1024 * 1024),
            max_query_chars=settings.env_int("SERVE_MAX_QUERY_CHARS", 500),
            max_page_size=settings.env_int("SERVE_MAX_PAGE_SIZE", 100),
            max_depth=settings.env_int("SERVE_MAX_DEPTH", 1000),
            ef_search=ef or None,
            store=object_store.from_env(),
            presign_seconds=presign,
            derivative_cache_dir=str(paths.derivative_cache),
        )

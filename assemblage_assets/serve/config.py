"""Settings of ``assemblage serve`` (environment variables, all documented in README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assemblage_assets.core import settings


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
    object_store_dir: str = ""  # local object store root (OBJECT_STORE_DIR / ASSEMBLAGE_HOME/objects)
    object_prefix: str = ""  # R2_PREFIX
    derivative_cache_dir: str = ""  # ASSEMBLAGE_HOME/derivatives: thumbnails before publishing

    @classmethod
    def from_env(cls) -> ServeConfig:
        paths = settings.Paths.from_env()
        store = "" if (settings.env_str("R2_BUCKET") or settings.env_str("S3_BUCKET")) else \
            settings.env_str("OBJECT_STORE_DIR", str(paths.object_store))
        ef = settings.env_int("SEARCH_EF_SEARCH", 0)
        return cls(
            token=settings.env_str("ASSEMBLAGE_API_TOKEN"),
            rate_limit_per_minute=settings.env_int("SERVE_RATE_LIMIT", 600),
            cors_origins=tuple(o.strip() for o in settings.env_str("SERVE_CORS_ORIGINS").split(",") if o.strip()),
            max_upload_bytes=settings.env_int("SERVE_MAX_UPLOAD_BYTES", 25 * 1024 * 1024),
            max_query_chars=settings.env_int("SERVE_MAX_QUERY_CHARS", 500),
            max_page_size=settings.env_int("SERVE_MAX_PAGE_SIZE", 100),
            max_depth=settings.env_int("SERVE_MAX_DEPTH", 1000),
            ef_search=ef or None,
            object_store_dir=str(Path(store).expanduser().resolve()) if store else "",
            object_prefix=settings.env_str("R2_PREFIX"),
            derivative_cache_dir=str(paths.derivative_cache),
        )

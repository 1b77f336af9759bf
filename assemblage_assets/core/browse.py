"""Where the browse page of ``assemblage serve`` shows a shard: the link Dagster's asset
metadata carries for each shard's materialization."""

from __future__ import annotations

from urllib.parse import quote

from assemblage_assets.core import settings

DEFAULT_BROWSE_URL = "http://127.0.0.1:8000"


def browse_base_url() -> str:
    """``BROWSE_BASE_URL``: how users reach ``assemblage serve`` (default its own default bind)."""
    return (settings.env_str("BROWSE_BASE_URL") or DEFAULT_BROWSE_URL).rstrip("/")


def shard_browse_url(shard: str) -> str:
    return f"{browse_base_url()}/shard/{quote(shard, safe='')}"


def image_browse_url(image_id: str) -> str:
    return f"{browse_base_url()}/image/{quote(image_id, safe='')}"

"""Response models of the API (they make ``/openapi.json`` exact enough to fuzz against)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class Card(BaseModel):
    """One image of a result grid."""

    image_id: str
    width: int
    height: int
    thumbnail_width: int | None = None
    thumbnail_height: int | None = None
    thumbhash: str | None = None
    thumbnail: str | None = None  # URL: public (IMAGE_BASE_URL) or /media/{id}/thumbnail
    preview: str | None = None
    caption: str | None = None
    captured_at: str | None = None  # camera local time, ISO 8601 without an offset (EXIF has none)
    place_city: str | None = None
    place_country: str | None = None
    shard: str | None = None
    score: float | None = None  # reciprocal rank fusion score (text search)
    distance: float | None = None  # cosine distance of the vector, when the vector list has it
    ranks: dict[str, int] | None = None  # 1-based rank in each fused list: vector, caption, tags


class CardPage(BaseModel):
    model: str | None = None
    ef_search: int | None = None
    items: list[Card]
    next_cursor: str | None = None


class PathRow(BaseModel):
    path: str
    shard: str
    status: str
    error_kind: str | None = None
    error_message: str | None = None
    processed_at: datetime | None = None


class TagRow(BaseModel):
    tag: str
    confidence: float
    models: list[str]


class Member(BaseModel):
    model_config = ConfigDict(extra="allow")
    image_id: str
    hash_distance: int
    clip_distance: float | None = None
    thumbnail: str | None = None


class DuplicateGroup(BaseModel):
    group_id: int
    representative_id: str
    updated_at: datetime | None = None
    members: list[Member]


class DuplicatePage(BaseModel):
    items: list[DuplicateGroup]
    next_cursor: str | None = None


class Detail(BaseModel):
    """Everything the catalogue knows about an image (the original's private URL excluded)."""

    image_id: str
    content_hash: str
    bytes: int
    width: int
    height: int
    format: str
    mode: str | None = None
    frame_count: int
    exif_data: dict[str, Any]
    captured_at: str | None = None  # camera local time, ISO 8601 without an offset (EXIF has none)
    captured_at_source: str | None = None
    original_key: str
    palette: list[dict[str, Any]] | None = None
    thumbnail_width: int | None = None
    thumbnail_height: int | None = None
    preview_width: int | None = None
    preview_height: int | None = None
    thumbnail: str | None = None
    preview: str | None = None
    thumbhash: str | None = None
    caption: str | None = None
    caption_model: str | None = None
    owner: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    place_city: str | None = None
    place_region: str | None = None
    place_country: str | None = None
    phash: str | None = None
    derived_at: datetime | None = None
    uploaded_at: datetime | None = None
    created_at: datetime
    paths: list[PathRow]
    tags: list[TagRow]
    models: list[str]
    duplicates: DuplicateGroup | None = None
    browse_url: str


class ShardRow(BaseModel):
    shard: str
    paths: int
    failed: int
    counts: dict[str, int]
    browse_url: str


class ShardPage(BaseModel):
    items: list[ShardRow]
    next_cursor: str | None = None


class Failure(BaseModel):
    path: str
    error_kind: str | None = None
    error_message: str | None = None
    attempts: int
    updated_at: datetime
    image_id: str | None = None


class FailurePage(BaseModel):
    shard: str
    items: list[Failure]
    next_cursor: str | None = None


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "bad input"},
    401: {"model": Problem, "description": "token required (ASSEMBLAGE_API_TOKEN)"},
    404: {"model": Problem, "description": "not found"},
    409: {"model": Problem, "description": "the catalogue cannot answer yet (no vectors, no provider)"},
    429: {"model": Problem, "description": "rate limited (Retry-After)"},
    503: {"model": Problem, "description": "the model of the searched vectors cannot be loaded here"},
}

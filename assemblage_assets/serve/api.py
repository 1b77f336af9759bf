"""The JSON API under ``/api``: every input bounded, every answer a declared model.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at
runtime, and some refer to the configuration the router is built with."""


import base64
import binascii
import json
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from assemblage_assets.core.browse import image_browse_url, shard_browse_url
from assemblage_assets.embeddings import search as vector_search
from assemblage_assets.serve import schemas
from assemblage_assets.serve.config import ServeConfig
from assemblage_assets.serve.queries import Filters
from assemblage_assets.serve.service import BadRequest, Page, SearchService

TEXT = r"^[^\x00]*$"  # Postgres text never holds NUL: refuse it as input, not as a 500
MAX_FILTER_VALUES = 10
UPLOAD_CHUNK = 1024 * 1024


def encode_cursor(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":"), default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, keys: set[str]) -> dict[str, Any] | None:
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("malformed cursor") from None
    if not isinstance(value, dict) or set(value) != keys:
        raise BadRequest("malformed cursor")
    return value


def image_id_of(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise BadRequest(f"not an image id: {text[:60]!r}") from None


def filters(
    shard: Annotated[list[Annotated[str, Query(max_length=200, pattern=TEXT)]] | None, Query(
        description="shard key (repeat for several)", max_length=MAX_FILTER_VALUES)] = None,
    source: Annotated[str | None, Query(max_length=500, pattern=TEXT, description=(
        "a source URI of IMAGE_SOURCES: folder path, s3://bucket/prefix or dropbox:/Folder"))] = None,
    camera_make: Annotated[str | None, Query(max_length=100, pattern=TEXT)] = None,
    camera_model: Annotated[str | None, Query(max_length=100, pattern=TEXT)] = None,
    captured_from: Annotated[date | None, Query(description="inclusive", ge=date(1800, 1, 1), le=date(2999, 12, 31))] = None,
    captured_to: Annotated[date | None, Query(description="inclusive", ge=date(1800, 1, 1), le=date(2999, 12, 31))] = None,
    country: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2")] = None,
    place: Annotated[str | None, Query(max_length=100, pattern=TEXT, description="city or region")] = None,
    tag: Annotated[list[Annotated[str, Query(max_length=64, pattern=TEXT)]] | None, Query(
        description="every one of these tags", max_length=MAX_FILTER_VALUES)] = None,
    orientation: Literal["landscape", "portrait", "square"] | None = None,
    has_duplicates: bool | None = None,
    colour: Annotated[str | None, Query(pattern=r"^#?[0-9a-fA-F]{6}$", description="#rrggbb")] = None,
    colour_distance: Annotated[float, Query(ge=0, le=442, description="RGB distance to a palette entry")] = 60.0,
) -> Filters:
    from assemblage_assets.core.tags import normalize_tag

    rgb = None
    if colour:
        hexa = colour.lstrip("#")
        rgb = (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
    return Filters(
        shards=tuple(dict.fromkeys(shard or ())), source=source or None, camera_make=camera_make or None, camera_model=camera_model or None,
        captured_from=captured_from, captured_to=captured_to, country=country, place=place or None,
        tags=tuple(dict.fromkeys(t for t in (normalize_tag(x) for x in tag or ()) if t)),
        orientation=orientation, has_duplicates=has_duplicates, colour=rgb, colour_distance=colour_distance,
    )


FiltersDep = Annotated[Filters, Depends(filters)]
Cursor = Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_\-]*$")]
EfSearch = Annotated[int | None, Query(ge=1, le=vector_search.EF_SEARCH_MAX,
                                       description="HNSW candidates (default SEARCH_EF_SEARCH)")]


def media_urls(row: dict[str, Any]) -> dict[str, Any]:
    """Public URLs when published under IMAGE_BASE_URL, else this app's /media routes."""
    out = dict(row)
    if isinstance(out.get("captured_at"), datetime):  # naive: not an RFC 3339 date-time
        out["captured_at"] = out["captured_at"].isoformat()
    for kind in ("thumbnail", "preview"):
        url = out.pop(f"{kind}_url", None)
        present = out.pop(f"has_{kind}", None)
        if present is None:
            present = out.get(f"{kind}_key") is not None
        out.pop(f"{kind}_key", None)
        if url and url.startswith(("http://", "https://")):
            out[kind] = url
        else:
            out[kind] = f"/media/{out['image_id']}/{kind}" if present else None
    return out


def build_router(service: SearchService, config: ServeConfig) -> APIRouter:
    router = APIRouter(prefix="/api", responses=schemas.ERRORS)
    Limit = Annotated[int, Query(ge=1, le=config.max_page_size, description="page size (SERVE_MAX_PAGE_SIZE)")]  # noqa: N806

    def page_of(page: Page, offset: int, ef: int | None) -> schemas.CardPage:
        if page.next_offset is not None and page.next_offset >= config.max_depth:
            page.next_offset = None
        return schemas.CardPage(
            model=page.model, ef_search=vector_search.ef_search_for(offset + 1, ef or service.ef_search),
            items=[schemas.Card(**media_urls(i)) for i in page.items],
            next_cursor=encode_cursor({"o": page.next_offset}) if page.next_offset is not None else None)

    def offset_of(cursor: str | None, limit: int) -> int:
        value = decode_cursor(cursor, {"o"})
        offset = 0 if value is None else value["o"]
        if not isinstance(offset, int) or offset < 0 or offset + limit > config.max_depth:
            raise BadRequest(f"results page only to depth {config.max_depth} (SERVE_MAX_DEPTH)")
        return offset

    @router.get("/search", response_model=schemas.CardPage, summary="text search (CLIP + caption + tags, fused)")
    def text_search(
        f: FiltersDep, q: Annotated[str, Query(min_length=1, max_length=config.max_query_chars, pattern=TEXT)],
        limit: Limit = 24, cursor: Cursor = None, ef_search: EfSearch = None,
    ) -> schemas.CardPage:
        if not q.strip():
            raise BadRequest("empty query")
        offset = offset_of(cursor, limit)
        return page_of(service.search_text(q.strip(), f, limit, offset, ef_search), offset, ef_search)

    @router.get("/images/{image_id}/similar", response_model=schemas.CardPage, summary="more like this")
    def similar(image_id: str, f: FiltersDep, limit: Limit = 24, cursor: Cursor = None,
                ef_search: EfSearch = None) -> schemas.CardPage:
        offset = offset_of(cursor, limit)
        return page_of(service.like(image_id_of(image_id), f, limit, offset, ef_search), offset, ef_search)

    @router.post("/search/image", response_model=schemas.CardPage, summary="images like an uploaded file",
                 responses={413: {"model": schemas.Problem}, 415: {"model": schemas.Problem}})
    async def upload_search(request: Request, file: Annotated[UploadFile, File()], f: FiltersDep,
                            limit: Limit = 24, ef_search: EfSearch = None) -> schemas.CardPage:
        declared = int(request.headers.get("content-length") or 0)
        if declared > config.max_upload_bytes + 64 * 1024:
            raise BadRequest(f"upload larger than {config.max_upload_bytes:,} bytes (SERVE_MAX_UPLOAD_BYTES)", 413)
        chunks = []
        while chunk := await file.read(UPLOAD_CHUNK):
            chunks.append(chunk)
            if sum(map(len, chunks)) > config.max_upload_bytes:
                break
        page = await run_in_threadpool(service.by_upload, chunks, config.max_upload_bytes, f, limit, ef_search)
        return page_of(page, 0, ef_search)

    @router.get("/images", response_model=schemas.CardPage, summary="browse (newest first), with filters")
    def browse(f: FiltersDep, limit: Limit = 48, cursor: Cursor = None) -> schemas.CardPage:
        value = decode_cursor(cursor, {"t", "i"})
        after = None
        if value is not None:
            try:
                after = (datetime.fromisoformat(str(value["t"])), image_id_of(str(value["i"])))
            except ValueError:
                raise BadRequest("malformed cursor") from None
        rows, nxt = service.browse(f, limit, after)
        items = [schemas.Card(**media_urls({k: v for k, v in r.items() if k != "created_at"})) for r in rows]
        return schemas.CardPage(items=items, next_cursor=encode_cursor({"t": nxt[0], "i": nxt[1]}) if nxt else None)

    @router.get("/images/{image_id}", response_model=schemas.Detail, summary="everything about one image")
    def detail(image_id: str) -> schemas.Detail:
        row = media_urls(service.detail(image_id_of(image_id)))
        if row.get("duplicates"):
            row["duplicates"] = group_out(row["duplicates"])
        return schemas.Detail(**row, browse_url=image_browse_url(row["image_id"]))

    def group_out(group: dict[str, Any]) -> dict[str, Any]:
        return {**group, "members": [media_urls(m) for m in group["members"] or []]}

    @router.get("/shards", response_model=schemas.ShardPage, summary="status counts and failures per shard")
    def shards(limit: Limit = 100, cursor: Cursor = None) -> schemas.ShardPage:
        value = decode_cursor(cursor, {"s"})
        rows, nxt = service.shards(limit, str(value["s"]) if value else None)
        return schemas.ShardPage(items=[schemas.ShardRow(**r, browse_url=shard_browse_url(r["shard"])) for r in rows],
                                 next_cursor=encode_cursor({"s": nxt}) if nxt else None)

    @router.get("/shards/{shard}", response_model=schemas.ShardRow, summary="status counts of one shard")
    def shard(shard: Annotated[str, Path(max_length=200, pattern=TEXT)]) -> schemas.ShardRow:
        return schemas.ShardRow(**service.shard(shard), browse_url=shard_browse_url(shard))

    @router.get("/shards/{shard}/failures", response_model=schemas.FailurePage, summary="failed files of a shard")
    def failures(shard: Annotated[str, Path(max_length=200, pattern=TEXT)], limit: Limit = 100,
                 cursor: Cursor = None) -> schemas.FailurePage:
        value = decode_cursor(cursor, {"p"})
        rows, nxt = service.failures(shard, limit, str(value["p"]) if value else None)
        return schemas.FailurePage(shard=shard, items=[schemas.Failure(**r) for r in rows],
                                   next_cursor=encode_cursor({"p": nxt}) if nxt else None)

    @router.get("/duplicates", response_model=schemas.DuplicatePage, summary="near-duplicate groups")
    def duplicates(limit: Limit = 50, cursor: Cursor = None) -> schemas.DuplicatePage:
        value = decode_cursor(cursor, {"g"})
        after = value["g"] if value else None
        if after is not None and (not isinstance(after, int) or not 0 <= after < 2**62):
            raise BadRequest("malformed cursor")
        rows, nxt = service.duplicates(limit, after)
        return schemas.DuplicatePage(items=[schemas.DuplicateGroup(**group_out(g)) for g in rows],
                                     next_cursor=encode_cursor({"g": nxt}) if nxt else None)

    return router

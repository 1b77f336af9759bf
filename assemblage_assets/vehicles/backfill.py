"""The trickle backfill of vehicle listing images, as plain functions over a psycopg connection.

Vehicles are imported without images; their URLs wait in ``origin_metadata->'image_urls'``.
A vehicle *needs backfill* when it is public, lists image URLs, has no ``vehicle_images`` row,
is not marked ``images_backfilled`` and has not been given up on. Each one is handled whole:
its images are downloaded (``fetch``), stored with a thumbnail, and then its rows and its
``origin_metadata`` outcome are written in one transaction, so a crash leaves it untouched and
the next trickle starts it again (object keys are deterministic and simply overwritten).

Outcome in ``origin_metadata``:
  - some image stored: ``images_backfilled: true``, ``images_backfilled_count``,
    ``images_backfilled_at`` and ``images_backfill_failures`` ([{url, kind, reason}]);
  - nothing stored: ``images_backfill_status: "retrying"``, ``images_backfill_attempts`` and
    ``images_backfill_next_attempt_at`` (backoff doubling from ``retry_backoff_minutes``), until
    ``max_attempts``: then ``images_backfill_status: "failed"`` with the failures, for good.

Object layout (under the store's prefix): ``vehicles/{vehicle_id}/{image_id}.{ext}`` and
``vehicles/{vehicle_id}/thumbnail/{image_id}.webp``, ``image_id`` being the content id the
image pipeline uses (uuid5 of the SHA-256), so a rerun rewrites the same keys.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image
from psycopg.types.json import Jsonb

from assemblage_assets.core.imaging import DerivativeSpec, image_id_for, write_thumbnail
from resources.image_fetch.client import FetchedImage, FetchError, ImageFetcher
from resources.object_store import (
    DERIVATIVE_CACHE_CONTROL,
    ObjectSpec,
    ObjectStore,
    PermanentObjectError,
    content_type_for,
)

Progress = Callable[[str], None]

# Partition key of the vehicles without an organization (organization keys are uuids).
NO_ORGANIZATION = "no-organization"
MAX_REPORTED_FAILURES = 50
MAX_BACKOFF = timedelta(days=1)
# Every key the backfill writes into origin_metadata besides image_urls: replaced as a whole.
STATE_KEYS = [
    "images_backfilled",
    "images_backfilled_count",
    "images_backfilled_at",
    "images_backfill_failures",
    "images_backfill_status",
    "images_backfill_attempts",
    "images_backfill_next_attempt_at",
    "images_backfill_last_attempt_at",
]

# Same predicate as the partial index vehicles_image_backfill_idx (sql/0004_vehicles.sql).
_CANDIDATE = """v.is_public IS TRUE
      AND jsonb_typeof(v.origin_metadata -> 'image_urls') = 'array'
      AND v.origin_metadata -> 'images_backfilled' IS DISTINCT FROM 'true'::jsonb"""
NEEDS_BACKFILL = f"""{_CANDIDATE}
      AND v.origin_metadata -> 'image_urls' <> '[]'::jsonb
      AND v.origin_metadata ->> 'images_backfill_status' IS DISTINCT FROM 'failed'
      AND NOT EXISTS (SELECT 1 FROM vehicle_images vi WHERE vi.vehicle_id = v.id)"""
DUE = "coalesce((v.origin_metadata ->> 'images_backfill_next_attempt_at')::timestamptz, '-infinity') <= now()"


@dataclass(frozen=True)
class BackfillOptions:
    """The older ``trickle-backfill-images`` knobs, same defaults, plus pacing and retries."""

    limit: int = 100
    batch_size: int = 10
    max_images_per_vehicle: int = 20
    dry_run: bool = False
    pause_seconds: float = 2.0
    max_attempts: int = 5
    retry_backoff_minutes: float = 30.0

    def __post_init__(self) -> None:
        for name in ("limit", "batch_size", "max_images_per_vehicle", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.pause_seconds < 0 or self.retry_backoff_minutes < 0:
            raise ValueError("pause_seconds and retry_backoff_minutes must not be negative")


@dataclass(frozen=True)
class Vehicle:
    id: str
    organization_id: str | None
    urls: list[str]  # as listed, deduplicated; position = index here
    attempts: int  # failed trickles so far


@dataclass
class BackfillReport:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (vehicle_id, url, reason)
    planned: list[tuple[str, list[str]]] = field(default_factory=list)  # dry run: (vehicle_id, urls)
    seconds: float = 0.0


# --- organizations and partition keys ------------------------------------------------------------


def organization_key(organization_id: str | None) -> str:
    return organization_id or NO_ORGANIZATION


def organization_filter(key: str) -> tuple[str, tuple[Any, ...]]:
    if key == NO_ORGANIZATION:
        return "v.organization_id IS NULL", ()
    try:
        return "v.organization_id = %s", (uuid.UUID(key),)
    except ValueError:
        raise ValueError(f"organization key must be a uuid or {NO_ORGANIZATION!r}, got {key!r}") from None


def due_counts(conn: psycopg.Connection) -> list[tuple[str, int]]:
    """(organization key, vehicles due for backfill now), the longest-waiting organization first."""
    rows = conn.execute(
        f"""SELECT coalesce(v.organization_id::text, %s) AS organization, count(*) AS n
            FROM vehicles v
            WHERE {NEEDS_BACKFILL} AND {DUE}
            GROUP BY 1
            ORDER BY min(v.created_at) NULLS LAST, 1""",
        (NO_ORGANIZATION,),
    ).fetchall()
    return [(r["organization"], r["n"]) for r in rows]


def allocate(counts: Sequence[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    """Share ``limit`` vehicles fairly between organizations (water-filling, in the given order):
    a small organization gets all it needs, the big ones split the rest."""
    wanted = {key: n for key, n in counts if n > 0}
    given = dict.fromkeys(wanted, 0)
    left = limit
    while left > 0:
        hungry = [k for k in wanted if given[k] < wanted[k]]
        if not hungry:
            break
        share = max(1, left // len(hungry))
        for key in hungry:
            take = min(share, wanted[key] - given[key], left)
            given[key] += take
            left -= take
            if left == 0:
                break
    return [(key, n) for key, n in given.items() if n > 0]


# --- selection -----------------------------------------------------------------------------------


def listed_urls(metadata: dict[str, Any] | None) -> list[str]:
    """The vehicle's image URLs in listed order, deduplicated. Entries may be strings or
    ``{"url": ...}`` objects; anything else is kept as text so it fails visibly as invalid."""
    urls = []
    for item in (metadata or {}).get("image_urls") or []:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            item = item["url"]
        urls.append(item.strip() if isinstance(item, str) else json.dumps(item))
    return list(dict.fromkeys(urls))


def select_vehicles(conn: psycopg.Connection, organization: str, limit: int) -> list[Vehicle]:
    """Up to ``limit`` vehicles of ``organization`` due for backfill, oldest first."""
    where, params = organization_filter(organization)
    rows = conn.execute(
        f"""SELECT v.id::text AS id, v.organization_id::text AS organization_id, v.origin_metadata
            FROM vehicles v
            WHERE {where} AND {NEEDS_BACKFILL} AND {DUE}
            ORDER BY v.created_at NULLS LAST, v.id
            LIMIT %s""",
        (*params, limit),
    ).fetchall()
    vehicles = []
    for row in rows:
        meta = row["origin_metadata"] or {}
        attempts = meta.get("images_backfill_attempts")
        vehicles.append(
            Vehicle(row["id"], row["organization_id"], listed_urls(meta), attempts if isinstance(attempts, int) else 0)
        )
    return vehicles


# --- one vehicle ---------------------------------------------------------------------------------


def object_keys(vehicle_id: str, image_id: str, ext: str) -> tuple[str, str]:
    """Layout keys (before the store's prefix) of an image and its thumbnail."""
    return f"vehicles/{vehicle_id}/{image_id}.{ext}", f"vehicles/{vehicle_id}/thumbnail/{image_id}.webp"


def store_image(
    store: ObjectStore, vehicle_id: str, image: FetchedImage, spec: DerivativeSpec, workdir: Path
) -> dict[str, Any]:
    """Thumbnail the image and put both objects in the store; returns the ``vehicle_images``
    values. Raises ``FetchError`` when the body does not decode, ``ObjectStoreError`` from the store."""
    image_id = str(image_id_for(image.sha256))
    original_rel, thumbnail_rel = object_keys(vehicle_id, image_id, image.ext)
    original = workdir / f"{image_id}.{image.ext}"
    thumbnail = workdir / f"{image_id}.webp"
    try:
        try:
            write_thumbnail(io.BytesIO(image.body), thumbnail, spec)
        except Image.DecompressionBombError as exc:
            raise FetchError("too-many-pixels", str(exc)) from None
        except (OSError, SyntaxError, EOFError, ValueError, TypeError, IndexError, MemoryError) as exc:
            raise FetchError("corrupt", f"the {image.format} image does not decode: {exc}") from None
        original.write_bytes(image.body)
        keys = {}
        for relative, source, sha256 in ((original_rel, original, image.sha256), (thumbnail_rel, thumbnail, None)):
            key = store.key(relative)
            store.put(
                ObjectSpec(
                    key=key,
                    visibility="public",  # listing photos are shown as published on the listing
                    sources=(source,),
                    content_type=content_type_for(key),
                    cache_control=DERIVATIVE_CACHE_CONTROL,  # content-addressed keys never change
                    sha256=sha256,
                    size=source.stat().st_size,
                )
            )
            keys[relative] = key
    finally:
        original.unlink(missing_ok=True)
        thumbnail.unlink(missing_ok=True)
    return {
        "object_key": keys[original_rel],
        "image_url": store.url("public", keys[original_rel]),
        "thumbnail_key": keys[thumbnail_rel],
        "thumbnail_url": store.url("public", keys[thumbnail_rel]),
        "width": image.width,
        "height": image.height,
        "bytes": image.size,
        "content_hash": image.sha256,
        "mime_type": content_type_for(original_rel),
    }


def outcome_metadata(
    attempts_before: int, stored: int, failures: list[dict[str, str]], options: BackfillOptions, now: datetime
) -> tuple[str, dict[str, Any]]:
    """(outcome, origin_metadata keys to set) after one trickle of a vehicle."""
    if stored:
        return "backfilled", {
            "images_backfilled": True,
            "images_backfilled_count": stored,
            "images_backfilled_at": now.isoformat(),
            "images_backfill_failures": failures,
        }
    attempts = attempts_before + 1
    state: dict[str, Any] = {
        "images_backfill_attempts": attempts,
        "images_backfill_last_attempt_at": now.isoformat(),
        "images_backfill_failures": failures,
    }
    if attempts >= options.max_attempts:
        return "failed", {**state, "images_backfill_status": "failed"}
    delay = min(timedelta(minutes=options.retry_backoff_minutes * 2 ** (attempts - 1)), MAX_BACKOFF)
    return "retrying", {
        **state,
        "images_backfill_status": "retrying",
        "images_backfill_next_attempt_at": (now + delay).isoformat(),
    }


_INSERT_IMAGE = """
    INSERT INTO vehicle_images (vehicle_id, source_url, position, object_key, image_url, thumbnail_key,
                                thumbnail_url, width, height, bytes, content_hash, mime_type)
    VALUES (%(vehicle_id)s, %(source_url)s, %(position)s, %(object_key)s, %(image_url)s, %(thumbnail_key)s,
            %(thumbnail_url)s, %(width)s, %(height)s, %(bytes)s, %(content_hash)s, %(mime_type)s)
    ON CONFLICT (vehicle_id, source_url) DO UPDATE SET
        position = EXCLUDED.position, object_key = EXCLUDED.object_key, image_url = EXCLUDED.image_url,
        thumbnail_key = EXCLUDED.thumbnail_key, thumbnail_url = EXCLUDED.thumbnail_url,
        width = EXCLUDED.width, height = EXCLUDED.height, bytes = EXCLUDED.bytes,
        content_hash = EXCLUDED.content_hash, mime_type = EXCLUDED.mime_type"""


def record_vehicle(
    conn: psycopg.Connection, vehicle_id: str, rows: list[dict[str, Any]], state: dict[str, Any]
) -> None:
    """The vehicle's images and its outcome in origin_metadata, together or not at all."""
    with conn.transaction():
        if rows:
            with conn.cursor() as cur:
                cur.executemany(_INSERT_IMAGE, [{**row, "vehicle_id": vehicle_id} for row in rows])
        conn.execute(
            """UPDATE vehicles
               SET origin_metadata = (coalesce(origin_metadata, '{}'::jsonb) - %s::text[]) || %s,
                   updated_at = now()
               WHERE id = %s""",
            (STATE_KEYS, Jsonb(state), vehicle_id),
        )


def backfill_vehicle(
    conn: psycopg.Connection,
    vehicle: Vehicle,
    *,
    fetcher: ImageFetcher,
    store: ObjectStore,
    spec: DerivativeSpec,
    options: BackfillOptions,
    workdir: Path,
    report: BackfillReport,
) -> str:
    """Fetch, store and record one vehicle; returns its outcome (backfilled, retrying, failed).

    A failing URL is recorded with its reason; a store that is misconfigured or down raises
    (``StoreConfigError``/``TransientStoreError``) and leaves the vehicle as it was.
    """
    urls = vehicle.urls[: options.max_images_per_vehicle]
    rows: list[dict[str, Any]] = []
    failed: dict[int, dict[str, str]] = {}
    for position, result in fetcher.fetch_many(urls):
        try:
            if isinstance(result, FetchError):
                raise result
            row = store_image(store, vehicle.id, result, spec, workdir)
        except (FetchError, PermanentObjectError) as exc:
            failed[position] = {"url": urls[position], "kind": exc.kind, "reason": str(exc)}
            continue
        report.counts["bytes"] += row["bytes"]
        rows.append({**row, "source_url": urls[position], "position": position})
    failures = [failed[p] for p in sorted(failed)]
    outcome, state = outcome_metadata(vehicle.attempts, len(rows), failures, options, datetime.now(UTC))
    record_vehicle(conn, vehicle.id, rows, state)
    report.counts[f"vehicles_{outcome}"] += 1
    report.counts["images_stored"] += len(rows)
    report.counts["urls_failed"] += len(failures)
    for failure in failures:
        if len(report.failures) < MAX_REPORTED_FAILURES:
            report.failures.append((vehicle.id, failure["url"], f"{failure['kind']}: {failure['reason']}"))
    return outcome


# --- one organization ----------------------------------------------------------------------------


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def backfill_organization(
    conn: psycopg.Connection,
    organization: str,
    *,
    fetcher: ImageFetcher,
    store: ObjectStore,
    spec: DerivativeSpec,
    options: BackfillOptions,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BackfillReport:
    """One trickle for one organization: up to ``limit`` due vehicles in batches of
    ``batch_size``, pausing ``pause_seconds`` between batches. A dry run lists the URLs it
    would fetch and touches neither the network, the store nor the database."""
    report = BackfillReport()
    started = time.perf_counter()
    vehicles = select_vehicles(conn, organization, options.limit)
    report.counts["vehicles_selected"] = len(vehicles)
    batches = list(_batched(vehicles, options.batch_size))
    with tempfile.TemporaryDirectory(prefix="vehicle-images-") as tmp:
        for number, batch in enumerate(batches, 1):
            if options.dry_run:
                for vehicle in batch:
                    urls = vehicle.urls[: options.max_images_per_vehicle]
                    report.planned.append((vehicle.id, urls))
                    report.counts["urls_planned"] += len(urls)
                    if progress:
                        progress(f"dry run: vehicle {vehicle.id} would fetch {len(urls)} image(s): {', '.join(urls)}")
                continue
            if number > 1 and options.pause_seconds:
                sleep(options.pause_seconds)
            outcomes = Counter(
                backfill_vehicle(
                    conn,
                    vehicle,
                    fetcher=fetcher,
                    store=store,
                    spec=spec,
                    options=options,
                    workdir=Path(tmp),
                    report=report,
                )
                for vehicle in batch
            )
            if progress:
                progress(
                    f"{organization} batch {number}/{len(batches)}: "
                    + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
                )
    report.seconds = time.perf_counter() - started
    return report


# --- monitoring ----------------------------------------------------------------------------------


def monitoring(conn: psycopg.Connection, failure_limit: int = 20) -> dict[str, Any]:
    """The older monitoring queries (vehicles needing backfill, backfilled) plus retries, give-ups
    and the most recent failed URLs with their reasons."""
    counts = conn.execute(
        f"""SELECT
                count(*) FILTER (WHERE {NEEDS_BACKFILL}) AS needing_backfill,
                count(*) FILTER (WHERE {NEEDS_BACKFILL} AND {DUE}) AS due_now,
                count(*) FILTER (WHERE {NEEDS_BACKFILL}
                                 AND v.origin_metadata ->> 'images_backfill_status' = 'retrying') AS retrying,
                count(*) FILTER (WHERE v.origin_metadata ->> 'images_backfill_status' = 'failed') AS failed,
                count(*) FILTER (WHERE v.origin_metadata -> 'images_backfilled' = 'true'::jsonb) AS backfilled
            FROM vehicles v"""
    ).fetchone()
    images = conn.execute("SELECT count(*) AS n FROM vehicle_images").fetchone()["n"]
    failed_urls = conn.execute(
        """SELECT v.id::text AS vehicle_id, f ->> 'url' AS url, f ->> 'kind' AS kind, f ->> 'reason' AS reason,
                  coalesce(v.origin_metadata ->> 'images_backfill_status', 'backfilled') AS vehicle_status
           FROM vehicles v
           CROSS JOIN LATERAL jsonb_array_elements(
               CASE WHEN jsonb_typeof(v.origin_metadata -> 'images_backfill_failures') = 'array'
                    THEN v.origin_metadata -> 'images_backfill_failures' ELSE '[]'::jsonb END) AS f
           ORDER BY v.updated_at DESC NULLS LAST, v.id
           LIMIT %s""",
        (failure_limit,),
    ).fetchall()
    return {
        **dict(counts),
        "vehicle_images": images,
        "due_by_organization": dict(due_counts(conn)),
        "failed_urls": [dict(r) for r in failed_urls],
    }

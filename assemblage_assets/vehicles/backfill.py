"""The trickle backfill of vehicle listing images, as plain functions over a psycopg connection.

Vehicles are imported without images; their URLs wait in ``origin_metadata->'image_urls'``.
Which vehicles are due, and every write, is in ``records.py``. Each vehicle is handled whole:
its images are downloaded (``resources.image_fetch``), stored with a thumbnail, and then its rows and its
``origin_metadata`` outcome are written in one transaction, so a crash leaves it untouched and
the next trickle starts it again (object keys are deterministic and simply overwritten).

Outcome in ``origin_metadata``:
  - some image stored: ``images_backfilled: true``, ``images_backfilled_count``,
    ``images_backfilled_at`` and ``images_backfill_failures`` ([{url, kind, reason}]);
  - nothing stored: ``images_backfill_status: "retrying"``, ``images_backfill_attempts`` and
    ``images_backfill_next_attempt_at`` (backoff doubling from ``retry_backoff_minutes``), until
    ``max_attempts``: then ``images_backfill_status: "failed"`` with the failures, for good;
  - nothing stored and every URL refused (``REFUSED_KINDS``): ``failed`` at once.

Object layout (under the store's prefix): ``vehicles/{vehicle_id}/{image_id}.{ext}`` and
``vehicles/{vehicle_id}/thumbnail/{image_id}.{thumbnail ext}`` (``.webp`` by default; size and
format from the same ``DerivativeSpec`` as the derivatives: ``THUMBNAIL_SIZE``,
``THUMBNAIL_FORMAT``), ``image_id`` being the content id the image pipeline uses (uuid5 of the
SHA-256), so a rerun rewrites the same keys.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image

from assemblage_assets.constants import vehicle_object_keys
from assemblage_assets.core.batching import batched
from assemblage_assets.core.imaging import DerivativeSpec, image_id_for, write_thumbnail
from assemblage_assets.core.reports import MAX_REPORTED_FAILURES, Progress
from assemblage_assets.vehicles import records
from assemblage_assets.vehicles.records import Vehicle
from resources.image_fetch.client import FetchedImage, FetchError, ImageFetcher
from resources.object_store import (
    DERIVATIVE_CACHE_CONTROL,
    ObjectSpec,
    ObjectStore,
    PermanentObjectError,
    content_type_for,
)

MAX_BACKOFF = timedelta(days=1)
# Refusals of the URL itself (address guard, scheme, credentials, not a URL): the same on every
# try, so a vehicle whose URLs are all refused fails at once instead of backing off five times.
REFUSED_KINDS = frozenset({"refused-address", "refused-scheme", "invalid-url"})


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


@dataclass
class BackfillReport:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (vehicle_id, url, reason)
    planned: list[tuple[str, list[str]]] = field(default_factory=list)  # dry run: (vehicle_id, urls)
    seconds: float = 0.0


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


# --- one vehicle ---------------------------------------------------------------------------------


def store_image(
    store: ObjectStore, vehicle_id: str, image: FetchedImage, spec: DerivativeSpec, workdir: Path
) -> dict[str, Any]:
    """Thumbnail the image and put both objects in the store; returns the ``vehicle_images``
    values. Raises ``FetchError`` when the body does not decode, ``ObjectStoreError`` from the store."""
    image_id = str(image_id_for(image.sha256))
    original_rel, thumbnail_rel = vehicle_object_keys(vehicle_id, image_id, image.ext, spec.thumbnail_ext)
    original = workdir / f"{image_id}.{image.ext}"
    thumbnail = workdir / f"{image_id}.thumbnail.{spec.thumbnail_ext}"  # a JPEG's must not be the original's name
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
    refused_only = bool(failures) and all(f["kind"] in REFUSED_KINDS for f in failures)
    if attempts >= options.max_attempts or refused_only:
        return "failed", {**state, "images_backfill_status": "failed"}
    delay = min(timedelta(minutes=options.retry_backoff_minutes * 2 ** (attempts - 1)), MAX_BACKOFF)
    return "retrying", {
        **state,
        "images_backfill_status": "retrying",
        "images_backfill_next_attempt_at": (now + delay).isoformat(),
    }


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
    records.record_vehicle(conn, vehicle.id, rows, state)
    report.counts[f"vehicles_{outcome}"] += 1
    report.counts["images_stored"] += len(rows)
    report.counts["urls_failed"] += len(failures)
    for failure in failures:
        if len(report.failures) < MAX_REPORTED_FAILURES:
            report.failures.append((vehicle.id, failure["url"], f"{failure['kind']}: {failure['reason']}"))
    return outcome


# --- one organization ----------------------------------------------------------------------------


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
    vehicles = records.select_vehicles(conn, organization, options.limit)
    report.counts["vehicles_selected"] = len(vehicles)
    batches = list(batched(vehicles, options.batch_size))
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

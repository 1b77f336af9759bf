"""Names shared across areas: jobs, run tags, the per-path status of an image and the layout
of object keys. Plain values only, so any module may import them."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

# --- jobs and run tags ---------------------------------------------------------------------------

INGEST_SHARD_JOB = "ingest_shard_job"
PUBLISH_SHARD_JOB = "publish_shard_job"
VERIFY_OBJECTS_JOB = "verify_shard_objects_job"
EMBED_SHARD_JOB = "embed_shard_job"
CAPTION_SHARD_JOB = "caption_shard_job"
FINALIZE_INDEX_JOB = "finalize_index_job"
VEHICLE_BACKFILL_JOB = "vehicle_backfill_job"
DISTRIBUTED_SHARD_JOB = "distributed_shard_job"

STAGE_TAG = "assemblage/stage"  # the run queue caps runs tagged with EMBED_STAGE (instance_config)
EMBED_STAGE = "embeddings"
TRIGGER_TAG = "assemblage/trigger"  # which sensor or schedule requested a run
MODEL_TAG = "assemblage/model"


# --- per-path status (processing_log.status) ------------------------------------------------------


class ImageStatus(StrEnum):
    """Where one source path stands; ``images/catalog.py`` makes every transition.

    pending -> processed (derivatives) -> uploaded (r2_objects) -> indexed (embeddings);
    failed or rejected from any stage, with ``error_kind`` and ``error_message``.
    """

    PENDING = "pending"  # a valid candidate image, described, waiting for derivatives
    PROCESSED = "processed"  # thumbnail, preview and palette exist in the derivative cache
    UPLOADED = "uploaded"  # original, thumbnail and preview confirmed in the object store
    INDEXED = "indexed"  # published and has a vector for the active embedding model
    FAILED = "failed"  # a candidate that cannot be ingested
    REJECTED = "rejected"  # not a candidate at all (extension)
    DUPLICATE = "duplicate"  # derived; a near-duplicate of a published image, not published (SKIP_NEAR_DUPLICATES)


# Derived at least: what r2_objects publishes or re-checks and what embeddings may embed.
DERIVED_STATUSES = (ImageStatus.PROCESSED.value, ImageStatus.UPLOADED.value, ImageStatus.INDEXED.value)
PUBLISHED_STATUSES = (ImageStatus.UPLOADED.value, ImageStatus.INDEXED.value)
NOT_INGESTED_STATUSES = (ImageStatus.FAILED.value, ImageStatus.REJECTED.value)


# --- object-key layout (before the store's prefix) ------------------------------------------------


def original_key(image_id: str, ext: str, captured_at: datetime | None) -> str:
    """``original/{yyyy}/{mm}/{id}.{ext}``: capture month when EXIF has it, else first-seen month."""
    when = captured_at or datetime.now(UTC)
    return f"original/{when:%Y}/{when:%m}/{image_id}.{ext}"


def thumbnail_key(image_id: str, ext: str = "webp") -> str:
    """``thumbnail/{id}.{ext}``, ``ext`` following the thumbnail format (``DerivativeSpec.thumbnail_ext``).
    The catalogue stores the key each derivation wrote (``images.thumbnail_key``); readers use that
    and fall back to this default only for rows without one."""
    return f"thumbnail/{image_id}.{ext}"


def preview_key(image_id: str) -> str:
    return f"watermarked/{image_id}.jpg"


def vehicle_object_keys(vehicle_id: str, image_id: str, ext: str, thumbnail_ext: str = "webp") -> tuple[str, str]:
    """Keys of a listing image and its thumbnail (``thumbnail_ext`` of the thumbnail format)."""
    return f"vehicles/{vehicle_id}/{image_id}.{ext}", f"vehicles/{vehicle_id}/thumbnail/{image_id}.{thumbnail_ext}"

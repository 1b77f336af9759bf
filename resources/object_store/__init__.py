"""Where published images live: a local directory (the embedded default) or S3-compatible storage.

``ObjectStore`` (``base.py``) is the interface the ``r2_objects`` asset annotates; ``from_env()``
picks ``S3ObjectStore`` (``s3.py``) when ``R2_BUCKET``/``S3_BUCKET`` is set (Cloudflare R2, AWS S3,
MinIO, ...) and ``LocalObjectStore`` (``local.py``) under ``ASSEMBLAGE_HOME/objects`` otherwise.

Keys are content-addressed and written atomically: a local object appears by rename, an S3
object when its PUT (or CompleteMultipartUpload) succeeds, so a reader never sees a partial one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assemblage_assets.core import settings
from resources.object_store.base import (
    DERIVATIVE_CACHE_CONTROL,
    ORIGINAL_CACHE_CONTROL,
    ObjectSpec,
    ObjectStore,
    ObjectStoreError,
    PermanentObjectError,
    StoreConfigError,
    TransientStoreError,
    Visibility,
    content_type_for,
    plan_listing,
)
from resources.object_store.local import LocalObjectStore
from resources.object_store.s3 import MAX_PRESIGN_SECONDS, S3ClientResource, S3ObjectStore, classify_error

__all__ = [
    "DERIVATIVE_CACHE_CONTROL", "MAX_PRESIGN_SECONDS", "ORIGINAL_CACHE_CONTROL", "LocalObjectStore", "ObjectSpec",
    "ObjectStore", "ObjectStoreError", "PermanentObjectError", "S3ClientResource", "S3ObjectStore", "StoreConfigError",
    "TransientStoreError", "Visibility", "classify_error", "content_type_for", "from_env", "plan_listing",
]


def from_env() -> ObjectStore:
    """S3-compatible storage when ``R2_BUCKET``/``S3_BUCKET`` is set, else the local directory."""
    common: dict[str, Any] = {
        "prefix": settings.env_str("R2_PREFIX"),
        "public_base_url": settings.env_str("IMAGE_BASE_URL"),
        "concurrency": settings.env_int("UPLOAD_CONCURRENCY", 8),
        "existence_check": "none" if settings.env_bool("SKIP_R2_HEAD") else "list",
    }
    bucket = settings.env_str("R2_BUCKET") or settings.env_str("S3_BUCKET")
    if not bucket:
        root = settings.env_str("OBJECT_STORE_DIR", str(settings.Paths.from_env().object_store))
        return LocalObjectStore(root=str(Path(root).expanduser().resolve()), **common)
    return S3ObjectStore(
        **S3ObjectStore.connection_from_env(),
        bucket=bucket,
        private_bucket=settings.env_str("R2_PRIVATE_BUCKET") or settings.env_str("S3_PRIVATE_BUCKET"),
        **common,
    )


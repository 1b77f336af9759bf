"""The staging folder: remote entries' bytes on local disk between download and publication.

A remote entry (``s3://…``, ``dropbox:…``) is downloaded to ``staged_path`` (a name derived from
its URI, extension kept), probed and derived from there like a local file, and removed once its
image is published or it failed: disk use stays within ``SOURCE_STAGING_BUDGET_MB`` however
large the source. Every stage finds the file from the ``processing_log`` path alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import psycopg

from assemblage_assets.constants import ImageStatus
from resources.image_source import is_remote_uri

_STAGED = (ImageStatus.PENDING.value, ImageStatus.PROCESSED.value)  # still needs its bytes


def staged_path(root: Path, uri: str) -> Path:
    digest = hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()
    ext = os.path.splitext(uri.rsplit("/", 1)[-1])[1].lower()[:8]
    return root / digest[:2] / f"{digest}{ext}"


def local_file(path: str, root: Path | None) -> Path:
    """Where the bytes of a ``processing_log`` path are: the file itself, or its staged copy."""
    return staged_path(root, path) if root is not None and is_remote_uri(path) else Path(path)


def used_bytes(root: Path) -> int:
    """Bytes in the staging folder now (bounded by the budget, so the walk is small)."""
    total = 0
    if root.is_dir():
        for directory, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.stat(os.path.join(directory, name)).st_size
                except FileNotFoundError:
                    pass
    return total


def is_empty(root: Path) -> bool:
    if not root.is_dir():
        return True
    return not any(files for _, _, files in os.walk(root))


def release(root: Path, uris: Iterable[str]) -> int:
    """Remove the staged copies of these entries; returns how many were there."""
    removed = 0
    for uri in uris:
        if is_remote_uri(uri):
            try:
                staged_path(root, uri).unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def release_settled(conn: psycopg.Connection, shard: str, root: Path) -> int:
    """Remove the staged copies of the shard's remote entries that no stage needs any more
    (published, indexed, failed or rejected). Free when nothing is staged."""
    if is_empty(root):
        return 0
    rows = conn.execute(
        """SELECT local_path FROM processing_log
           WHERE shard = %s AND status <> ALL(%s) AND (local_path LIKE 's3://%%' OR local_path LIKE 'dropbox:%%')""",
        (shard, list(_STAGED)),
    ).fetchall()
    return release(root, (r["local_path"] for r in rows))

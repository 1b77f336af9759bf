"""Where source images come from, chosen by ``IMAGE_SOURCES`` (comma-separated URIs).

``ImageSource`` (``base.py``) is the interface; one module per backend:

- a local path (``local.py``): today's folder; unset ``IMAGE_SOURCES`` means ``IMAGES_DIR``;
- ``s3://bucket/prefix`` (``s3.py``): any S3-compatible bucket (AWS, R2, MinIO, Supabase's
  S3 endpoint), ``SOURCE_S3_*`` settings falling back to the object store's;
- ``dropbox:/Folder`` (``dropbox.py``): the official SDK, ``DROPBOX_ACCESS_TOKEN`` or
  ``DROPBOX_APP_KEY`` + ``DROPBOX_REFRESH_TOKEN``.

An entry may be written ``label=URI``; otherwise each source gets a label from its URI
(``dropbox``, the bucket, the folder's name), used as the shard-key prefix when more than one
source is configured (``dropbox~Photos-2023``). A new backend is one module plus one line in
``from_uri``.
"""

from __future__ import annotations

import re
from pathlib import Path

from assemblage_assets.core import settings
from resources.image_source.base import (
    ROOT,
    CursorResetError,
    EntryError,
    ImageSource,
    SourceConfigError,
    SourceEntry,
    SourceError,
    SourceShard,
    TransientSourceError,
    TruncatedDownloadError,
    with_retries,
)
from resources.image_source.dropbox import DropboxSource
from resources.image_source.local import LocalFolderSource
from resources.image_source.s3 import S3Source

__all__ = [
    "ROOT", "CursorResetError", "DropboxSource", "EntryError", "ImageSource", "LocalFolderSource", "S3Source", "SourceConfigError",
    "SourceEntry", "SourceError", "SourceShard", "TransientSourceError", "TruncatedDownloadError", "from_env", "from_uri", "is_remote_uri",
    "source_uris", "with_retries",
]

_LABEL = re.compile(r"^([a-z0-9][a-z0-9-]{0,30})=(.+)$")


def is_remote_uri(path: str) -> bool:
    """A ``processing_log`` path that names a remote entry rather than a local file."""
    return path.startswith(("s3://", "dropbox:"))


def source_uris(raw: str | None = None) -> list[str]:
    """The configured source URIs (``IMAGE_SOURCES``, else ``IMAGES_DIR``), labels kept."""
    raw = settings.env_str("IMAGE_SOURCES") if raw is None else raw
    uris = [part.strip() for part in raw.split(",") if part.strip()]
    return uris or [str(settings.images_dir())]


def _default_label(uri: str) -> str:
    if uri.startswith("dropbox:"):
        return "dropbox"
    if uri.startswith("s3://"):
        name = uri.removeprefix("s3://").split("/", 1)[0]
    else:
        name = Path(uri).name or "local"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:31] or "source"


def from_uri(uri: str, label: str = "") -> ImageSource:
    """The source one URI (``label=URI`` allowed) stands for, settings from the environment."""
    match = _LABEL.match(uri)
    if match and not uri.startswith(("s3://", "dropbox:", "/")):
        label, uri = match.group(1), match.group(2)
    label = label or _default_label(uri)
    if uri.startswith("s3://"):
        return S3Source.from_uri(uri, label=label)
    if uri.startswith("dropbox:"):
        return DropboxSource.from_uri(uri, label=label)
    if "://" in uri:
        raise ValueError(f"unsupported image source {uri!r}: use a local path, s3://bucket/prefix or dropbox:/Folder")
    return LocalFolderSource(root=str(Path(uri).expanduser().resolve()), label=label)


def from_env(raw: str | None = None) -> list[ImageSource]:
    """Every configured source, labels made unique (``dropbox``, ``dropbox-2``)."""
    sources: list[ImageSource] = []
    taken: set[str] = set()
    for uri in source_uris(raw):
        source = from_uri(uri)
        label, n = source.label, 1
        while label in taken:
            n += 1
            label = f"{source.label}-{n}"
        taken.add(label)
        sources.append(source.model_copy(update={"label": label}) if label != source.label else source)
    return sources

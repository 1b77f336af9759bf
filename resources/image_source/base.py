"""The interface every image source implements: shards, entries page by page, bytes; and the
errors that decide what happens to an entry or to the whole run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg

T = TypeVar("T")
ROOT = ""  # the shard name of the entries directly under the source's root


# --- errors -----------------------------------------------------------------------------------


class SourceError(Exception):
    """Base of the errors below; ``kind`` is the machine-readable class stored in the catalogue."""

    kind = "source-error"


class SourceConfigError(SourceError):
    """Credentials, bucket, folder or endpoint are wrong: nothing can be read, stop the run."""

    kind = "source-config"


class TransientSourceError(SourceError):
    """Throttling, 5xx, resets, truncated bodies: worth another try."""

    kind = "source-unavailable"


class TruncatedDownloadError(TransientSourceError):
    """The body ended before the listed size (a dropped connection): worth another try."""

    kind = "truncated"


class CursorResetError(SourceError):
    """The source no longer honours a change cursor (Dropbox ``reset``): list it in full again."""

    kind = "cursor-reset"


class EntryError(SourceError):
    """This one entry cannot be read (deleted since it was listed, forbidden, too large)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- what a source lists ------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceShard:
    """A first-level folder (prefix) of a source, or ``ROOT`` for the entries at its top."""

    source_uri: str
    name: str  # folder name as the source spells it; ROOT for the top-level entries

    @property
    def recursive(self) -> bool:
        return self.name != ROOT


@dataclass(frozen=True)
class SourceEntry:
    """One listed file: its URI (the ``processing_log`` path), size and change marker."""

    uri: str  # s3://bucket/key, dropbox:/path
    size: int
    marker: str  # ETag, content_hash: equal markers mean equal bytes
    modified: float | None = None  # epoch seconds, for the uploads sensor's cursor

    @property
    def extension(self) -> str:
        return os.path.splitext(self.uri.rsplit("/", 1)[-1])[1].lower()


# --- the interface ------------------------------------------------------------------------------


class ImageSource(dg.ConfigurableResource):
    """Where source images come from. Subclasses: local folder, S3-compatible bucket, Dropbox.

    Secrets are never fields: a source holds the *names* of the environment variables that hold
    them and reads them when it connects, so they never show in the Dagster UI or run config.
    """

    label: str = ""  # shard-key prefix when several sources are configured (e.g. ``dropbox``)

    @property
    def is_local(self) -> bool:
        return False

    @property
    def uri(self) -> str:
        """The source as configured (``s3://bucket/prefix``), never containing secrets."""
        raise NotImplementedError

    def preflight(self) -> None:
        """One cheap call proving the source is readable; raises ``SourceConfigError`` naming the setting."""
        raise NotImplementedError

    def preflight_or_fail(self) -> None:
        """``preflight`` for an asset: a wrong configuration fails the run without retries."""
        try:
            self.preflight()
        except SourceConfigError as exc:
            raise dg.Failure(description=f"image source {self.uri} not usable: {exc}", allow_retries=False) from None
        except TransientSourceError as exc:
            raise dg.Failure(description=f"image source {self.uri} unavailable: {exc}") from None

    def shards(self) -> Iterator[SourceShard]:
        """First-level folders, plus ``ROOT`` when files sit directly at the top."""
        raise NotImplementedError

    def entries(self, shard: SourceShard) -> Iterator[SourceEntry]:
        """Every file of the shard, fetched page by page (never a full listing in memory)."""
        raise NotImplementedError

    def entry(self, uri: str) -> SourceEntry:
        """Metadata of one entry (``assemblage process``); ``EntryError('source-missing')`` if gone."""
        raise NotImplementedError

    def download(self, entry: SourceEntry, dest: Path) -> int:
        """Write the entry's bytes to ``dest`` (atomically) and return their count. Raises
        ``EntryError``, ``TransientSourceError`` (a short body included) or ``SourceConfigError``."""
        raise NotImplementedError

    def request_counts(self) -> dict[str, int]:
        return {}


def write_stream(chunks: Iterator[bytes], dest: Path, expected: int) -> int:
    """Stream ``chunks`` into ``dest`` via a temporary file; a body shorter or longer than
    listed is a ``TransientSourceError`` (truncated, or changed since listing) and leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    written = 0
    try:
        with tmp.open("wb") as fh:
            for chunk in chunks:
                written += len(chunk)
                fh.write(chunk)
        if written != expected:
            raise TruncatedDownloadError(f"download truncated: {written:,} of {expected:,} bytes")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def with_retries(call: Callable[[], T], attempts: int = 4, base_delay: float = 0.5) -> T:
    """``call`` again on ``TransientSourceError`` with exponential backoff; other errors pass."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except TransientSourceError:
            if attempt == attempts:
                raise
            time.sleep(base_delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")

"""A Dropbox folder as an image source, through the official ``dropbox`` SDK.

Listing pages through ``files/list_folder`` + ``files/list_folder/continue`` cursors, and the
same cursors give the changes since (``changes``, from ``latest_cursor``: the uploads sensor's
feed); the change marker is Dropbox's ``content_hash``, checked again on the downloaded bytes (so a
truncated or swapped body never gets in). The SDK itself waits out HTTP 429 for the
``Retry-After`` the server sends (``max_rate_limit_retries`` times), and refreshes a short-lived
token when an app key + refresh token are configured.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from assemblage_assets.core import settings
from resources.image_source.base import (
    ROOT,
    CursorResetError,
    EntryError,
    ImageSource,
    SourceConfigError,
    SourceEntry,
    SourceShard,
    TransientSourceError,
    TruncatedDownloadError,
    write_stream,
)
from resources.request_counts import RequestCounts

_BLOCK = 4 * 1024 * 1024  # Dropbox content_hash: sha256 of the sha256 of each 4 MiB block


def content_hash(path: Path) -> str:
    """Dropbox's ``content_hash`` of a local file."""
    blocks = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            blocks.update(hashlib.sha256(block).digest())
    return blocks.hexdigest()


def parse_uri(uri: str) -> str:
    """``dropbox:/Folder`` -> ``/Folder`` (``""``: the whole Dropbox)."""
    folder = "/" + uri.removeprefix("dropbox:").strip("/")
    return "" if folder == "/" else folder


def _client_class() -> type:
    import dropbox
    from dropbox.session import API_HOST, HOST_API, HOST_CONTENT, HOST_NOTIFY

    class HostedDropbox(dropbox.Dropbox):  # type: ignore[misc]
        """The SDK client with its hosts set per instance (the SDK reads them from
        DROPBOX_API_HOST & co. once, at import): the API, content and token hosts."""

        def __init__(self, *args: Any, api_host: str = "", content_host: str = "", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._api_host = api_host or API_HOST
            if api_host:
                self._host_map = {HOST_API: api_host, HOST_CONTENT: content_host or api_host, HOST_NOTIFY: api_host}

        def refresh_access_token(self, host: str | None = None, scope: Any = None) -> Any:
            return super().refresh_access_token(host=host or self._api_host, scope=scope)

    return HostedDropbox


class DropboxSource(ImageSource):
    """Files under a Dropbox folder: each first-level subfolder is a shard."""

    folder: str = Field(description="Folder path ('' for the whole Dropbox), from dropbox:/Folder.")
    api_host: str = Field(default="", description="DROPBOX_API_HOST (default api.dropboxapi.com).")
    content_host: str = Field(default="", description="DROPBOX_API_CONTENT_HOST (default content.dropboxapi.com).")
    ca_certs: str = Field(default="", description="DROPBOX_CA_CERTS: PEM bundle to trust instead of the SDK's.")
    page_size: int = Field(default=2000, description="Entries per list_folder page (DROPBOX_PAGE_SIZE).")
    max_rate_limit_retries: int = 8
    timeout: float = 100.0

    _client: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _counts: RequestCounts = PrivateAttr(default_factory=RequestCounts)

    @classmethod
    def from_uri(cls, uri: str, **fields: Any) -> DropboxSource:
        return cls(
            folder=parse_uri(uri),
            api_host=settings.env_str("DROPBOX_API_HOST"),
            content_host=settings.env_str("DROPBOX_API_CONTENT_HOST"),
            ca_certs=settings.env_str("DROPBOX_CA_CERTS"),
            page_size=settings.env_int("DROPBOX_PAGE_SIZE", 2000),
            **fields,
        )

    @property
    def uri(self) -> str:
        return f"dropbox:{self.folder or '/'}"

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                token = settings.env_str("DROPBOX_ACCESS_TOKEN")
                refresh = settings.env_str("DROPBOX_REFRESH_TOKEN")
                app_key = settings.env_str("DROPBOX_APP_KEY")
                if not token and not (refresh and app_key):
                    raise SourceConfigError(
                        f"no Dropbox credentials for {self.uri}: set DROPBOX_ACCESS_TOKEN, or DROPBOX_APP_KEY "
                        "and DROPBOX_REFRESH_TOKEN"
                    )
                import dropbox

                session = dropbox.create_session(max_connections=16, ca_certs=self.ca_certs or None)
                if self.ca_certs:
                    # requests lets REQUESTS_CA_BUNDLE override a session's own CA bundle (its #3829)
                    session.trust_env = False
                self._client = _client_class()(
                    oauth2_access_token=token or None,
                    oauth2_refresh_token=(refresh or None) if app_key else None,
                    app_key=app_key or None,
                    app_secret=settings.env_str("DROPBOX_APP_SECRET") or None,
                    max_retries_on_rate_limit=self.max_rate_limit_retries,
                    timeout=self.timeout,
                    session=session,
                    api_host=self.api_host, content_host=self.content_host,
                )
            return self._client

    def _call(self, route: str, *args: Any, **kwargs: Any) -> Any:
        self._counts.add(route)
        try:
            return getattr(self.client(), route)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._error(exc, route, kwargs.get("path") or (args[0] if args else "")) from None

    def request_counts(self) -> dict[str, int]:
        return self._counts.snapshot()

    def _error(self, exc: BaseException, route: str, path: str) -> Exception:
        import requests
        from dropbox import exceptions
        from dropbox.dropbox_client import BadInputException

        what = f"{route} {self.uri_of(path) if path.startswith('/') else self.uri}"
        if isinstance(exc, SourceConfigError):
            return exc
        if isinstance(exc, exceptions.AuthError):
            reason = "expired" if exc.error and exc.error.is_expired_access_token() else "rejected"
            return SourceConfigError(
                f"{what}: the Dropbox token was {reason}: check DROPBOX_ACCESS_TOKEN "
                "(or DROPBOX_APP_KEY + DROPBOX_REFRESH_TOKEN)"
            )
        if isinstance(exc, exceptions.BadInputError | BadInputException):
            return SourceConfigError(f"{what}: Dropbox refused the request as configured (app key / token)")
        if isinstance(exc, exceptions.RateLimitError):
            return TransientSourceError(f"{what}: rate limited (HTTP 429) beyond {self.max_rate_limit_retries} waits")
        if isinstance(exc, exceptions.InternalServerError | exceptions.HttpError):
            return TransientSourceError(f"{what}: HTTP {getattr(exc, 'status_code', '5xx')}")
        if isinstance(exc, exceptions.ApiError):
            error = exc.error
            if getattr(error, "is_reset", None) and error.is_reset():
                return CursorResetError(f"{what}: Dropbox reset the change cursor; list the folder again")
            lookup = error.get_path() if hasattr(error, "is_path") and error.is_path() else None
            if lookup is not None and lookup.is_not_found():
                return EntryError("source-missing", f"{what}: not found (deleted since it was listed?)")
            if lookup is not None and lookup.is_restricted_content():
                return EntryError("forbidden", f"{what}: Dropbox restricts this content")
            return EntryError("dropbox-error", f"{what}: {error}")
        if isinstance(exc, requests.RequestException | OSError):
            return TransientSourceError(f"{what}: {type(exc).__name__}")
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    def uri_of(self, path: str) -> str:
        return f"dropbox:{path}"

    def preflight(self) -> None:
        try:
            self._call("files_list_folder", self.folder, limit=1)
        except EntryError as exc:
            raise self._root_error(exc) from None

    def _root_error(self, exc: EntryError) -> SourceConfigError:
        if exc.kind == "source-missing":
            return SourceConfigError(f"the Dropbox folder {self.folder or '/'} does not exist: check IMAGE_SOURCES")
        return SourceConfigError(str(exc))

    def _listing(self, path: str, recursive: bool) -> Iterator[Any]:
        page = self._call("files_list_folder", path, recursive=recursive, limit=self.page_size)
        while True:
            yield from page.entries
            if not page.has_more:
                return
            page = self._call("files_list_folder_continue", page.cursor)

    def shards(self) -> Iterator[SourceShard]:
        from dropbox.files import FileMetadata, FolderMetadata

        top_level = False
        try:
            for item in self._listing(self.folder, recursive=False):
                if isinstance(item, FolderMetadata):
                    yield SourceShard(self.uri, item.name)
                top_level = top_level or isinstance(item, FileMetadata)
        except EntryError as exc:
            raise self._root_error(exc) from None
        if top_level:
            yield SourceShard(self.uri, ROOT)

    def entries(self, shard: SourceShard) -> Iterator[SourceEntry]:
        from dropbox.files import FileMetadata

        path = f"{self.folder}/{shard.name}" if shard.recursive else self.folder
        try:
            for item in self._listing(path, recursive=shard.recursive):
                if isinstance(item, FileMetadata):  # folders and deleted entries carry no bytes
                    yield self._entry(item)
        except EntryError as exc:
            if exc.kind != "source-missing":
                raise
            if not shard.recursive:
                raise self._root_error(exc) from None
            # the shard's folder is gone: it has no entries any more

    def latest_cursor(self) -> str:
        """A cursor for the whole (recursive) folder as it is now, without listing it."""
        try:
            return str(self._call("files_list_folder_get_latest_cursor", self.folder, recursive=True,
                                  limit=self.page_size).cursor)
        except EntryError as exc:
            raise self._root_error(exc) from None

    def changes(self, cursor: str) -> Iterator[tuple[list[SourceEntry], str, bool]]:
        """What changed under the folder since ``cursor``, a page at a time: (files added or
        modified, the cursor after this page, whether more pages follow). Deletions and folders
        carry no bytes and are left out. A cursor Dropbox no longer honours raises
        ``CursorResetError``; stopping after any page and resuming from its cursor loses nothing."""
        from dropbox.files import FileMetadata

        while True:
            try:
                page = self._call("files_list_folder_continue", cursor)
            except EntryError as exc:
                raise self._root_error(exc) from None
            cursor = str(page.cursor)
            yield [self._entry(item) for item in page.entries if isinstance(item, FileMetadata)], cursor, bool(page.has_more)
            if not page.has_more:
                return

    def _entry(self, item: Any) -> SourceEntry:
        modified = item.server_modified.replace(tzinfo=UTC).timestamp() if item.server_modified else None
        return SourceEntry(self.uri_of(item.path_display), int(item.size), item.content_hash or item.rev, modified)

    def entry(self, uri: str) -> SourceEntry:
        from dropbox.files import FileMetadata

        item = self._call("files_get_metadata", uri.removeprefix("dropbox:"))
        if not isinstance(item, FileMetadata):
            raise EntryError("not-a-file", f"{uri} is not a file")
        return self._entry(item)

    def download(self, entry: SourceEntry, dest: Path) -> int:
        _, response = self._call("files_download", entry.uri.removeprefix("dropbox:"))
        try:
            with response:
                size = write_stream(response.iter_content(1024 * 1024), dest, entry.size)
        except TransientSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection broke mid-body
            raise TruncatedDownloadError(f"download of {entry.uri} truncated: {type(exc).__name__}") from None
        if content_hash(dest) != entry.marker:
            dest.unlink(missing_ok=True)
            raise EntryError("source-changed", f"{entry.uri} changed since it was listed; read again next scan")
        return size

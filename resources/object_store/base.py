"""The object-store interface every backend implements: what an object is, the errors that
decide what happens to an image, and the listing planner shared by all backends."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.request_counts import RequestCounts

Visibility = Literal["public", "private"]

DERIVATIVE_CACHE_CONTROL = "public, max-age=31536000, immutable"
ORIGINAL_CACHE_CONTROL = "private, max-age=31536000, immutable"
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}
EXISTENCE_CHECKS = ("list", "head", "none")
LIST_PAGE_SIZE = 1000  # ListObjectsV2 maximum
_MIB = 1024 * 1024


def content_type_for(key: str) -> str:
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


# --- errors -----------------------------------------------------------------------------------


class ObjectStoreError(Exception):
    """Base of the errors below; ``kind`` is the machine-readable class stored in the catalogue."""

    kind = "store-error"


class StoreConfigError(ObjectStoreError):
    """Credentials, bucket or endpoint are wrong: nothing can be stored, stop the whole run."""

    kind = "store-config"


class TransientStoreError(ObjectStoreError):
    """Still failing after the client's retries (5xx, throttling, timeouts, resets): try later."""

    kind = "store-unavailable"


class PermanentObjectError(ObjectStoreError):
    """This one object cannot be stored (source gone or changed, request rejected)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ObjectSpec:
    """One object to publish: its full key and where its bytes come from."""

    key: str
    visibility: Visibility
    sources: tuple[Path, ...]  # first readable one wins (an original may have several paths)
    content_type: str
    cache_control: str
    sha256: str | None = None  # hex digest the bytes must have (originals: the content hash)
    size: int | None = None  # expected size, compared with what the store already holds
    copy_source: str | None = None  # s3://bucket/key on the store's own endpoint: a server-side copy, no upload
    copy_source_etag: str | None = None  # the source's ETag when scanned: the copy is of that version or fails


# --- the interface ----------------------------------------------------------------------------


class ObjectStore(dg.ConfigurableResource):
    """Publishes objects under deterministic keys and tells which of them already exist."""

    prefix: str = Field(default="", description="Key prefix before every key (R2_PREFIX).")
    public_base_url: str = Field(
        default="", description="Public base URL of thumbnails and previews (IMAGE_BASE_URL)."
    )
    concurrency: int = Field(default=8, description="Parallel uploads (UPLOAD_CONCURRENCY).")
    existence_check: str = Field(
        default="list",
        description="How to find objects already stored: 'list' the shard's prefixes, 'head' "
        "every object (the older loader's way) or 'none' to overwrite (SKIP_R2_HEAD=true).",
    )

    _counts: RequestCounts = PrivateAttr(default_factory=RequestCounts)

    # Interface ---------------------------------------------------------------------------------

    def preflight(self) -> None:
        """One cheap call proving the store is usable; raises ``StoreConfigError`` naming the setting."""
        raise NotImplementedError

    def preflight_or_fail(self) -> None:
        """``preflight`` for an asset: a wrong configuration fails the run without retries, an
        outage fails it with retries (the asset's RetryPolicy)."""
        try:
            self.preflight()
        except StoreConfigError as exc:
            raise dg.Failure(description=f"object store not usable: {exc}", allow_retries=False) from None
        except TransientStoreError as exc:
            raise dg.Failure(description=f"object store unavailable: {exc}") from None

    def describe(self) -> str:
        """Human-readable location, never containing secrets."""
        raise NotImplementedError

    def put(self, spec: ObjectSpec) -> int:
        """Store one object (integrity-checked); returns its size. Raises ``ObjectStoreError``."""
        raise NotImplementedError

    def list_sizes(self, visibility: Visibility, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every complete object whose key starts with ``prefix``."""
        raise NotImplementedError

    def head_size(self, visibility: Visibility, key: str) -> int | None:
        raise NotImplementedError

    def read(self, visibility: Visibility, key: str, max_bytes: int = 16 * _MIB) -> bytes | None:
        """The bytes of one stored object (a thumbnail to hash again), None when it is not there.
        Raises ``ObjectStoreError`` for a failed read or an object over ``max_bytes``."""
        raise NotImplementedError

    def url(self, visibility: Visibility, key: str) -> str:
        raise NotImplementedError

    def presigned_get_url(
        self, visibility: Visibility, key: str, expires_in: int, *, content_type: str | None = None,
        cache_control: str | None = None,
    ) -> str | None:
        """A URL that lets whoever holds it GET one object for ``expires_in`` seconds, signed
        here without a request; ``content_type``/``cache_control`` override the stored headers
        of that response. None when the backend has no such URLs (local: serve ``local_file``)."""
        return None

    def local_file(self, visibility: Visibility, key: str) -> Path | None:
        """The file holding one object when the store is a local directory and it is there."""
        return None

    # Shared behaviour --------------------------------------------------------------------------

    def key(self, relative: str) -> str:
        """Full key of a layout key (``thumbnail/{id}.webp``): with the configured prefix."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/{relative}" if prefix else relative

    def request_counts(self) -> dict[str, int]:
        """API calls made so far, by operation (cost and speed accounting)."""
        return self._counts.snapshot()

    def _count(self, operation: str, n: int = 1) -> None:
        self._counts.add(operation, n)

    def existing(
        self, visibility: Visibility, keys: Collection[str], population: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Size of each of ``keys`` that is already stored.

        ``population`` estimates how many objects each key directory (``thumbnail/``) already
        holds; listing is planned with it so a shard never pages through the whole bucket.
        """
        if self.existence_check not in EXISTENCE_CHECKS:
            raise StoreConfigError(f"existence_check must be one of {EXISTENCE_CHECKS}, got {self.existence_check!r}")
        if self.existence_check == "none" or not keys:
            return {}
        wanted = set(keys)
        if self.existence_check == "head":
            prefixes, heads = [], sorted(wanted)
        else:
            prefixes, heads = plan_listing(wanted, population or {})
        found: dict[str, int] = {}

        def list_one(prefix: str) -> dict[str, int]:
            return {k: size for k, size in self.list_sizes(visibility, prefix) if k in wanted}

        def head_one(key: str) -> dict[str, int]:
            size = self.head_size(visibility, key)
            return {} if size is None else {key: size}

        jobs: list[tuple[Callable[[str], dict[str, int]], str]] = [(list_one, p) for p in prefixes]
        jobs += [(head_one, k) for k in heads]
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            for part in pool.map(lambda job: job[0](job[1]), jobs):
                found.update(part)
        return found


def plan_listing(keys: Iterable[str], population: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """Split ``keys`` into prefixes to list and keys to HEAD, whichever takes fewer requests.

    Per key directory the cost of listing ``dir + first k name characters`` is estimated from
    the directory's population (names start with uuid hex, so k more characters keep ~1/16^k
    of it); a HEAD per key wins only when the shard is small against a huge directory.
    """
    by_dir: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        directory, _, name = key.rpartition("/")
        by_dir[f"{directory}/" if directory else ""].append(name)
    prefixes: list[str] = []
    heads: list[str] = []
    for directory, names in sorted(by_dir.items()):
        total = population.get(directory, 0) + len(names)
        best_cost, best = len(names), None
        for k in range(5):
            subprefixes = {directory + name[:k] for name in names}
            pages = math.ceil(max(1.0, total / 16**k) / LIST_PAGE_SIZE)
            if len(subprefixes) * pages < best_cost:
                best_cost, best = len(subprefixes) * pages, subprefixes
        if best is None:
            heads.extend(directory + name for name in names)
        else:
            prefixes.extend(sorted(best))
    return prefixes, heads


def _read_verified(sources: tuple[Path, ...], sha256: str | None) -> tuple[Path, bytes, bytes]:
    """(path, bytes, sha256 digest) of the first source that exists and has the expected content."""
    problem = PermanentObjectError("source-missing", f"no source file: {', '.join(map(str, sources))}")
    for path in sources:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problem = PermanentObjectError("source-unreadable", f"cannot read {path}: {exc}")
            continue
        digest = hashlib.sha256(data).digest()
        if sha256 and digest.hex() != sha256:
            problem = PermanentObjectError("source-changed", f"{path} changed since it was scanned")
            continue
        return path, data, digest
    raise problem


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_MIB):
            h.update(chunk)
    return h.digest()

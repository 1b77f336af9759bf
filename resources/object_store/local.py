"""Objects as files under a local directory: the embedded default."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from pydantic import Field

from resources.object_store.base import (
    _MIB,
    ObjectSpec,
    ObjectStore,
    ObjectStoreError,
    PermanentObjectError,
    StoreConfigError,
    TransientStoreError,
    Visibility,
)


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root`` (same keys as the bucket), written by temp file + rename."""

    root: str = Field(description="Directory holding the objects (ASSEMBLAGE_HOME/objects).")

    def describe(self) -> str:
        return f"local directory {self.root}"

    def _path(self, key: str) -> Path:
        path = Path(self.root) / key
        if ".." in Path(key).parts:
            raise PermanentObjectError("bad-key", f"key escapes the store: {key!r}")
        return path

    def preflight(self) -> None:
        root = Path(self.root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=root):
                pass
        except OSError as exc:
            raise StoreConfigError(f"object store directory {root} is not writable: {exc} (OBJECT_STORE_DIR)") from None

    def put(self, spec: ObjectSpec) -> int:
        self._count("PutObject")
        target = self._path(spec.key)
        problem: ObjectStoreError = PermanentObjectError(
            "source-missing", f"no source file: {', '.join(map(str, spec.sources))}"
        )
        for source in spec.sources:
            try:
                return self._copy_verified(source, target, spec.sha256)
            except FileNotFoundError:
                continue
            except PermanentObjectError as exc:
                problem = exc
        raise problem

    def _copy_verified(self, source: Path, target: Path, sha256: str | None) -> int:
        """Stream ``source`` into a temp file beside ``target``, check the hash, then rename."""
        try:
            src = source.open("rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise PermanentObjectError("source-unreadable", f"cannot read {source}: {exc}") from exc
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            src.close()
            raise TransientStoreError(f"cannot write under {target.parent}: {exc}") from exc
        try:
            digest, size = hashlib.sha256(), 0
            with src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(_MIB):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if sha256 and digest.hexdigest() != sha256:
                raise PermanentObjectError("source-changed", f"{source} changed since it was scanned")
            os.replace(tmp, target)
            return size
        except OSError as exc:
            raise TransientStoreError(f"cannot write {target}: {exc}") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)  # no-op after the rename

    def list_sizes(self, visibility: Visibility, prefix: str) -> Iterator[tuple[str, int]]:
        self._count("ListObjectsV2")
        directory, _, start = prefix.rpartition("/")
        base = Path(self.root) / directory
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            return
        for entry in entries:
            # Dot files are temp files of writes in progress (or killed): never objects.
            if entry.name.startswith(start) and not entry.name.startswith(".") and entry.is_file():
                yield (f"{directory}/{entry.name}" if directory else entry.name), entry.stat().st_size

    def head_size(self, visibility: Visibility, key: str) -> int | None:
        self._count("HeadObject")
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, visibility: Visibility, key: str, max_bytes: int = 16 * _MIB) -> bytes | None:
        self._count("GetObject")
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PermanentObjectError("store-error", f"cannot read {key}: {exc}") from exc
        if len(data) > max_bytes:
            raise PermanentObjectError("too-large", f"{key} is over {max_bytes:,} bytes")
        return data

    def existing(
        self, visibility: Visibility, keys: Collection[str], population: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        # A stat per key is the cheap check on a filesystem; listing would read whole directories.
        if self.existence_check == "none":
            return {}
        found = {}
        for key in keys:
            try:
                found[key] = self._path(key).stat().st_size
            except FileNotFoundError:
                pass
        return found

    def local_file(self, visibility: Visibility, key: str) -> Path | None:
        root = Path(self.root).resolve()
        path = (root / key).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

    def url(self, visibility: Visibility, key: str) -> str:
        if visibility == "public" and self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{key}"
        return self._path(key).as_uri()

"""Streaming directory scan: yields one entry per file without ever listing the whole tree.

Memory stays flat in the number of files: only the stack of directories still to visit and the
identities of visited directories (for symlink-loop detection) are held.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from assemblage_assets.shards import Shard


@dataclass(frozen=True)
class ScanEntry:
    path: str  # as the OS gave it (may hold surrogate escapes for undecodable bytes)
    size: int | None = None
    mtime_ns: int | None = None
    error_kind: str | None = None  # set when the entry cannot be a candidate image at all
    error_message: str | None = None

    @property
    def db_path(self) -> str:
        """Text form for Postgres: undecodable bytes shown as ``\\xNN`` escapes."""
        return os.fsencode(self.path).decode("utf-8", "backslashreplace")


def _stat_error(path: str, exc: OSError) -> ScanEntry:
    if exc.errno == errno.ELOOP:
        return ScanEntry(path, error_kind="symlink-loop", error_message="symlink loop: too many levels of symbolic links")
    if exc.errno == errno.ENOENT:
        return ScanEntry(path, error_kind="broken-symlink", error_message="symlink target does not exist")
    if exc.errno == errno.EACCES:
        return ScanEntry(path, error_kind="unreadable", error_message=f"permission denied: {exc.strerror}")
    return ScanEntry(path, error_kind="unreadable", error_message=f"cannot stat: {exc.strerror or exc}")


def iter_shard_files(shard: Shard) -> Iterator[ScanEntry]:
    """Yield every file of the shard (recursively unless it is the top-level shard).

    Directory symlinks are followed once; a link back into a directory already visited is
    reported as a symlink loop instead of being walked forever.
    """
    root = str(shard.path)
    try:
        visited = {_dir_identity(root)}
    except OSError as exc:
        yield _stat_error(root, exc)
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError as exc:
            yield ScanEntry(directory, error_kind="unreadable", error_message=f"cannot list directory: {exc.strerror or exc}")
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    yield _stat_error(entry.path, exc)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not shard.recursive:
                        continue  # subfolders of the top level are shards of their own
                    identity = (st.st_dev, st.st_ino)
                    if identity in visited:
                        yield ScanEntry(entry.path, error_kind="symlink-loop", error_message="directory symlink points back into the tree already scanned")
                        continue
                    visited.add(identity)
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    yield ScanEntry(entry.path, size=st.st_size, mtime_ns=st.st_mtime_ns)
                else:
                    yield ScanEntry(entry.path, error_kind="not-a-file", error_message="not a regular file (device, socket or pipe)")


def _dir_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino

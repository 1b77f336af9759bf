"""Directory shards of ``IMAGES_DIR`` and their Dagster partition keys.

Each first-level subdirectory is one shard (scanned recursively); files directly at the top
level form the shard ``~top-level``. Keys are stable for a given folder name and safe to use in
URLs, shells and file names, whatever the folder is called (spaces, unicode, undecodable bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT_SHARD_KEY = "~top-level"  # '~' never appears in a derived key, so no folder can collide
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HASHED_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


def shard_key(dir_name: str) -> str:
    """Partition key for a first-level folder name.

    Plain names are kept as they are (readable in the UI); anything else becomes an ASCII slug
    plus 8 hex digits of a hash of the raw name bytes, so two names never share a key.
    """
    if _PLAIN_NAME.match(dir_name) and ".." not in dir_name and not _HASHED_SUFFIX.search(dir_name):
        return dir_name
    ascii_name = unicodedata.normalize("NFKD", dir_name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_name).strip("-").lower()[:48] or "shard"
    digest = hashlib.sha1(os.fsencode(dir_name)).hexdigest()[:8]
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class Shard:
    key: str
    path: Path
    recursive: bool  # the top-level shard holds only the files directly under IMAGES_DIR

    @property
    def display_name(self) -> str:
        return "(top-level files)" if self.key == ROOT_SHARD_KEY else os.fsdecode(self.path.name)


class ShardNotFoundError(KeyError):
    pass


def discover_shards(images_dir: Path) -> Iterator[Shard]:
    """Yield the shards of ``images_dir``: one per first-level folder, plus the top-level files."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images directory does not exist: {images_dir}")
    has_top_level_files = False
    with os.scandir(images_dir) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                yield Shard(shard_key(entry.name), Path(entry.path), recursive=True)
            else:
                has_top_level_files = True
    if has_top_level_files:
        yield Shard(ROOT_SHARD_KEY, images_dir, recursive=False)


def resolve_shard(images_dir: Path, key: str) -> Shard:
    """The shard a partition key stands for (keys are derived, so look among the folders)."""
    if key == ROOT_SHARD_KEY:
        return Shard(ROOT_SHARD_KEY, images_dir, recursive=False)
    for shard in discover_shards(images_dir):
        if shard.key == key:
            return shard
    raise ShardNotFoundError(f"no folder of {images_dir} has the shard key {key!r}")

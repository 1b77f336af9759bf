"""Shards of every configured image source and their partition keys.

With one source the keys are today's (``2024-01``, ``~top-level``); with several each key is
prefixed by its source's label (``dropbox~Photos-2023``, ``dropbox~~top-level``), the folder
part following ``shards.shard_key``. The label ends at the first ``~``, so keys stay unambiguous.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from assemblage_assets.images.shards import (
    ROOT_SHARD_KEY,
    Shard,
    ShardNotFoundError,
    discover_shards,
    resolve_shard,
    shard_key,
)
from resources.image_source import ROOT, ImageSource, LocalFolderSource, S3Source, SourceShard
from resources.image_source.s3 import shares_endpoint


@dataclass(frozen=True)
class ShardRef:
    """One shard of one source: a local ``Shard`` (scanned by ``scan.py``) or a remote one."""

    key: str
    source: ImageSource
    local: Shard | None = None
    remote: SourceShard | None = None

    @property
    def display_name(self) -> str:
        if self.local is not None:
            return "(top-level files)" if not self.local.recursive else self.local.display_name
        name = self.remote.name if self.remote else ROOT
        return f"{self.source.uri}{name}" if name != ROOT else f"{self.source.uri} (top-level files)"


def _prefixed(source: ImageSource, key: str, several: bool) -> str:
    return f"{source.label}~{key}" if several else key


def _folder_key(shard: SourceShard) -> str:
    return ROOT_SHARD_KEY if shard.name == ROOT else shard_key(shard.name)


def shard_refs(sources: Sequence[ImageSource]) -> Iterator[ShardRef]:
    """Every shard of every source (remote sources list their first level: one delimiter listing)."""
    several = len(sources) > 1
    for source in sources:
        if isinstance(source, LocalFolderSource):
            for shard in discover_shards(source.path):
                key = _prefixed(source, shard.key, several)
                yield ShardRef(key, source, local=dataclasses.replace(shard, key=key))
        else:
            for remote in source.shards():
                yield ShardRef(_prefixed(source, _folder_key(remote), several), source, remote=remote)


def resolve(sources: Sequence[ImageSource], key: str) -> ShardRef:
    """The shard a partition key stands for."""
    several = len(sources) > 1
    source, folder_key = sources[0], key
    if several:
        label, sep, folder_key = key.partition("~")
        matching = [s for s in sources if s.label == label]
        if not sep or not matching:
            raise ShardNotFoundError(f"shard key {key!r} names no configured source (labels: {[s.label for s in sources]})")
        source = matching[0]
    if isinstance(source, LocalFolderSource):
        shard = resolve_shard(source.path, folder_key)
        return ShardRef(key, source, local=dataclasses.replace(shard, key=key))
    if folder_key == ROOT_SHARD_KEY:
        return ShardRef(key, source, remote=SourceShard(source.uri, ROOT))
    for remote in source.shards():
        if remote.name != ROOT and shard_key(remote.name) == folder_key:
            return ShardRef(key, source, remote=remote)
    raise ShardNotFoundError(f"no folder of {source.uri} has the shard key {folder_key!r}")


def source_of(sources: Sequence[ImageSource], uri: str) -> ImageSource:
    """The configured remote source an entry URI belongs to (``assemblage process``)."""
    for source in sources:
        if not source.is_local and (uri.startswith(source.uri.rstrip("/") + "/") or uri == source.uri):
            return source
    raise ShardNotFoundError(f"{uri} is under none of the configured sources: {[s.uri for s in sources]}")


def shard_of_entry(sources: Sequence[ImageSource], source: ImageSource, uri: str) -> ShardRef:
    """The shard an entry URI falls in: its first path element under the source, else the top level."""
    relative = uri[len(source.uri.rstrip("/")) + 1:]
    folder, sep, _ = relative.partition("/")
    remote = SourceShard(source.uri, folder if sep else ROOT)
    return ShardRef(_prefixed(source, _folder_key(remote), len(sources) > 1), source, remote=remote)


def server_side_copies(sources: Sequence[ImageSource], store: object) -> Callable[[str], str | None] | None:
    """For ``publish_shard``: a path -> itself when it is an object of a bucket source the store
    can copy from server-side (same endpoint and key), else None; None when no source can."""
    buckets = tuple(f"s3://{s.bucket}/" for s in sources if isinstance(s, S3Source) and shares_endpoint(s, store))
    if not buckets:
        return None
    return lambda path: path if path.startswith(buckets) else None

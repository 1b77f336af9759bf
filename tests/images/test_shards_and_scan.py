"""Shard keys and the streaming scan, on real directory trees."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from dagster._core.definitions.partitions.utils.base import raise_error_on_invalid_partition_key_substring

from assemblage_assets.images.scan import iter_shard_files
from assemblage_assets.images.shards import ROOT_SHARD_KEY, discover_shards, resolve_shard, shard_key

NAMES = ["2024-01", "Ferien Sommer 2023", "東京 夜景", "a...b", "tab\there", "photos-deadbeef", ".hidden", "x" * 200]


@pytest.mark.parametrize("name", NAMES)
def test_shard_keys_are_safe_and_stable(name: str) -> None:
    key = shard_key(name)
    assert key == shard_key(name)  # stable
    raise_error_on_invalid_partition_key_substring([key])  # Dagster accepts it
    assert key.isascii() and " " not in key and "/" not in key and len(key) <= 80


def test_shard_keys_are_distinct_and_plain_names_stay_readable() -> None:
    keys = [shard_key(n) for n in NAMES]
    assert len(set(keys)) == len(keys)
    assert shard_key("2024-01") == "2024-01"
    assert shard_key("Ferien Sommer 2023").startswith("ferien-sommer-2023-")
    # a plain name that looks like a hashed key cannot collide with one
    assert shard_key("photos-deadbeef") != "photos-deadbeef"


def test_non_utf8_folder_names_get_a_key(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(raw)
    (shard,) = discover_shards(tmp_path)
    assert shard.key.startswith("caf-")
    assert resolve_shard(tmp_path, shard.key).path == shard.path


def test_discover_and_resolve(tmp_path: Path) -> None:
    (tmp_path / "a b").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "top.jpg").write_bytes(b"x")
    keys = {s.key: s for s in discover_shards(tmp_path)}
    assert set(keys) == {shard_key("a b"), "plain", ROOT_SHARD_KEY}
    assert keys[ROOT_SHARD_KEY].recursive is False
    assert resolve_shard(tmp_path, shard_key("a b")).path == tmp_path / "a b"
    with pytest.raises(KeyError):
        resolve_shard(tmp_path, "nope")


def test_scan_is_a_generator_and_recursive(tmp_path: Path) -> None:
    shard_dir = tmp_path / "s"
    (shard_dir / "d1" / "d2").mkdir(parents=True)
    for rel in ["a.jpg", "d1/b.png", "d1/d2/c.webp"]:
        (shard_dir / rel).write_bytes(b"data")
    (tmp_path / "top.jpg").write_bytes(b"top")
    shard = resolve_shard(tmp_path, "s")
    entries = iter_shard_files(shard)
    assert inspect.isgenerator(entries)
    paths = sorted(Path(e.path).relative_to(shard_dir).as_posix() for e in entries)
    assert paths == ["a.jpg", "d1/b.png", "d1/d2/c.webp"]
    top = [Path(e.path).name for e in iter_shard_files(resolve_shard(tmp_path, ROOT_SHARD_KEY))]
    assert top == ["top.jpg"]  # top-level shard does not descend into other shards


def test_scan_reports_loops_broken_links_and_special_files(tmp_path: Path) -> None:
    shard_dir = tmp_path / "s"
    (shard_dir / "sub").mkdir(parents=True)
    (shard_dir / "ok.jpg").write_bytes(b"x")
    os.symlink(shard_dir, shard_dir / "sub" / "back-to-root")  # directory loop
    os.symlink(shard_dir / "loop2", shard_dir / "loop1")  # file symlink loop
    os.symlink(shard_dir / "loop1", shard_dir / "loop2")
    os.symlink(shard_dir / "missing.jpg", shard_dir / "dangling.jpg")
    os.mkfifo(shard_dir / "pipe.jpg")
    entries = {Path(e.path).name: e for e in iter_shard_files(resolve_shard(tmp_path, "s"))}
    assert entries["ok.jpg"].error_kind is None and entries["ok.jpg"].size == 1
    assert entries["back-to-root"].error_kind == "symlink-loop"
    assert entries["loop1"].error_kind == "symlink-loop"
    assert entries["dangling.jpg"].error_kind == "broken-symlink"
    assert entries["pipe.jpg"].error_kind == "not-a-file"

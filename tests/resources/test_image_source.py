"""IMAGE_SOURCES parsing, labels and shard keys of several sources (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from assemblage_assets.images import staging
from assemblage_assets.images.shards import ROOT_SHARD_KEY, ShardNotFoundError, shard_key
from assemblage_assets.images.sources import resolve, shard_of_entry, shard_refs, source_of
from resources.image_source import DropboxSource, LocalFolderSource, S3Source, from_env, is_remote_uri
from resources.image_source.dropbox import parse_uri as dropbox_folder
from resources.image_source.s3 import parse_uri as s3_location


def test_uris_labels_and_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGE_SOURCES", raising=False)
    monkeypatch.setenv("IMAGES_DIR", str(tmp_path / "images"))
    (only,) = from_env()
    assert isinstance(only, LocalFolderSource) and only.root == str(tmp_path / "images")

    sources = from_env(f"{tmp_path}/photos, s3://Bucket.One/up/, dropbox:/Photos,dropbox:/More,inbox=s3://b2")
    assert [type(s) for s in sources] == [LocalFolderSource, S3Source, DropboxSource, DropboxSource, S3Source]
    assert [s.label for s in sources] == ["photos", "bucket-one", "dropbox", "dropbox-2", "inbox"]
    assert sources[1].uri == "s3://Bucket.One/up/" and sources[2].uri == "dropbox:/Photos"
    assert s3_location("s3://b/a/b/") == ("b", "a/b/") and s3_location("s3://b") == ("b", "")
    assert dropbox_folder("dropbox:/") == "" and dropbox_folder("dropbox:/A/B/") == "/A/B"
    with pytest.raises(ValueError, match="unsupported image source"):
        from_env("ftp://host/x")
    assert is_remote_uri("s3://b/k") and is_remote_uri("dropbox:/x") and not is_remote_uri("/data/x.jpg")


def test_keys_are_prefixed_only_with_several_sources_and_resolve_back(tmp_path: Path) -> None:
    for folder in ("a/2024", "a/Ferien Sommer", "b/2024"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.jpg").write_bytes(b"x")
    (tmp_path / "b" / "top.jpg").write_bytes(b"y")
    alone = from_env(str(tmp_path / "a"))
    assert sorted(r.key for r in shard_refs(alone)) == sorted(["2024", shard_key("Ferien Sommer")])
    both = from_env(f"{tmp_path / 'a'},{tmp_path / 'b'}")
    keys = sorted(r.key for r in shard_refs(both))
    assert keys == sorted(["a~2024", f"a~{shard_key('Ferien Sommer')}", "b~2024", f"b~{ROOT_SHARD_KEY}"])
    for key in keys:
        ref = resolve(both, key)
        assert ref.key == key and ref.local is not None and ref.local.key == key  # processing_log.shard
    assert resolve(both, "b~~top-level").local.recursive is False
    with pytest.raises(ShardNotFoundError):
        resolve(both, "c~2024")


def test_entry_uris_find_their_source_shard_and_staged_copy(tmp_path: Path) -> None:
    sources = from_env(f"{tmp_path},s3://bkt/up,dropbox:/Photos")
    bucket, box = sources[1], sources[2]
    assert source_of(sources, "s3://bkt/up/alice/a.jpg") is bucket
    assert source_of(sources, "dropbox:/Photos/Ferien ü/a.jpg") is box
    with pytest.raises(ShardNotFoundError):
        source_of(sources, "s3://other/x.jpg")
    assert shard_of_entry(sources, bucket, "s3://bkt/up/alice/a.jpg").key == "bkt~alice"
    assert shard_of_entry(sources, box, "dropbox:/Photos/Ferien ü/a.jpg").key == f"dropbox~{shard_key('Ferien ü')}"
    assert shard_of_entry(sources, bucket, "s3://bkt/up/top.jpg").key == f"bkt~{ROOT_SHARD_KEY}"
    staged = staging.staged_path(tmp_path, "dropbox:/Photos/Ferien ü/a.JPG")
    assert staged.suffix == ".jpg" and staged.parent.parent == tmp_path
    assert staging.local_file("/data/x.jpg", tmp_path) == Path("/data/x.jpg")
    assert staging.local_file("s3://bkt/up/a.png", tmp_path) == staging.staged_path(tmp_path, "s3://bkt/up/a.png")


def test_shard_sensor_registers_the_keys_of_every_source(tmp_path: Path) -> None:
    import dagster as dg

    from assemblage_assets.images.sensors import image_shards_sensor
    from resources.image_library import ImageLibraryResource

    for folder in ("a/2024", "b/2024"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.jpg").write_bytes(b"x")
    library = ImageLibraryResource(images_dir=str(tmp_path / "unused"), derivative_cache_dir=str(tmp_path / "c"),
                                   image_sources=f"{tmp_path / 'a'},{tmp_path / 'b'}")
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources={"library": library}) as context:
        result = image_shards_sensor(context)
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["a~2024", "b~2024"]
    assert sorted(r.run_key for r in result.run_requests) == ["discover:a~2024", "discover:b~2024"]

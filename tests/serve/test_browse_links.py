"""Each shard's materializations link to its page of the browse app (``browse`` metadata)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assemblage_assets.core.browse import shard_browse_url
from assemblage_assets.dev.sample_data import write_sample_tree
from assemblage_assets.images.assets import derivatives, raw_files
from assemblage_assets.images.shards import shard_key
from assemblage_assets.partitions import IMAGE_SHARDS
from resources.database import PostgresResource
from resources.image_library import ImageLibraryResource


def test_browse_url_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROWSE_BASE_URL", raising=False)
    assert shard_browse_url("street-2019") == "http://127.0.0.1:8000/shard/street-2019"
    monkeypatch.setenv("BROWSE_BASE_URL", "https://photos.example.org/browse/")
    assert shard_browse_url("~top-level") == "https://photos.example.org/browse/shard/~top-level"
    assert shard_browse_url("a/b c") == "https://photos.example.org/browse/shard/a%2Fb%20c"


def test_shard_materializations_link_to_the_shard_page(assemblage_env: dict[str, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSE_BASE_URL", "http://photos.internal:8080")
    tree = write_sample_tree(Path(assemblage_env["IMAGES_DIR"]), photos_per_shard=2)
    key = shard_key("Ferien Sommer 2023")
    resources = {
        "database": PostgresResource(dsn=assemblage_env["DATABASE_URL"]),
        "library": ImageLibraryResource(images_dir=str(tree.root), derivative_cache_dir=str(tmp_path / "cache")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, [key])
        result = dg.materialize([raw_files, derivatives], partition_key=key, instance=instance, resources=resources)
    assert result.success
    for node in ("raw_files", "derivatives"):
        link = result.asset_materializations_for_node(node)[0].metadata["browse"]
        assert isinstance(link, dg.UrlMetadataValue) and link.url == f"http://photos.internal:8080/shard/{key}"

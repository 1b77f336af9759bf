"""Multi-index hashing of 64-bit pHashes: four 16-bit bands (indexed in ``sql/0008``).

Two hashes within Hamming distance ``t`` differ in at most ``t // 4`` bits in at least one band
(pigeonhole: four bands each differing in more would add up to more than ``t``). So the
candidates of a hash are the images whose band ``b`` equals one of the values within
``t // 4`` bits of the query's band ``b``, for some ``b``: 697 values per band at t = 12..15,
looked up through the band indexes; the exact distance is then checked on those few rows.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

from assemblage_assets.core.perceptual import to_unsigned

BANDS = 4
BAND_BITS = 16
_BAND_MASK = (1 << BAND_BITS) - 1


def band_values(phash: int) -> list[int]:
    """The four bands, most significant first: ``(phash >> 48) & 65535`` ... ``phash & 65535``
    (the expressions of the indexes; on a signed bigint they give the same bits)."""
    u = to_unsigned(phash)
    return [(u >> (BAND_BITS * (BANDS - 1 - b))) & _BAND_MASK for b in range(BANDS)]


@lru_cache(maxsize=8)
def _flip_masks(radius: int) -> tuple[int, ...]:
    masks = [0]
    for r in range(1, min(radius, BAND_BITS) + 1):
        masks += [sum(1 << i for i in bits) for bits in combinations(range(BAND_BITS), r)]
    return tuple(masks)


def neighbourhoods(phash: int, max_distance: int) -> list[list[int]]:
    """Per band, every value within ``max_distance // BANDS`` bits of the query's band."""
    masks = _flip_masks(max_distance // BANDS)
    return [[value ^ m for m in masks] for value in band_values(phash)]

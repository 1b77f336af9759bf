"""Thresholds and the skip mode, from the environment (README lists the variables).

Defaults come from ``benchmarks/duplicates.py`` (figures in docs/duplicates.md): pHash ≤ 12 with
dHash ≤ 14 grouped 98% of the generated variants and none of the distinct photos of similar
scenes, whose closest pair was 20 bits apart in pHash (16 across unrelated photos).
"""

from __future__ import annotations

from dataclasses import dataclass

from assemblage_assets.core import settings
from assemblage_assets.core.perceptual import BITS


@dataclass(frozen=True)
class DuplicateSettings:
    phash_distance: int = 12  # candidates: Hamming distance of the pHashes at most this
    dhash_distance: int = 14  # ... and of the dHashes (second opinion; 64 turns it off)
    clip_distance: float = 0.15  # confirmed when both have a vector: cosine distance at most this
    skip: bool = False  # SKIP_NEAR_DUPLICATES: near-duplicates of published images are not published

    @classmethod
    def from_env(cls) -> DuplicateSettings:
        made = cls(
            phash_distance=settings.env_int("DUPLICATE_PHASH_DISTANCE", cls.phash_distance),
            dhash_distance=settings.env_int("DUPLICATE_DHASH_DISTANCE", cls.dhash_distance),
            clip_distance=settings.env_float("DUPLICATE_CLIP_DISTANCE", cls.clip_distance),
            skip=settings.env_bool("SKIP_NEAR_DUPLICATES"),
        )
        for name, value in (("DUPLICATE_PHASH_DISTANCE", made.phash_distance),
                            ("DUPLICATE_DHASH_DISTANCE", made.dhash_distance)):
            if not 0 <= value <= BITS:
                raise ValueError(f"{name} must be between 0 and {BITS}, got {value}")
        if not 0 <= made.clip_distance <= 2:
            raise ValueError(f"DUPLICATE_CLIP_DISTANCE must be between 0 and 2, got {made.clip_distance}")
        return made

"""64-bit perceptual hashes of an image (``imagehash``): pHash, and dHash as a second opinion.

Both are computed at derive time from the upright thumbnail already in memory: the hashes
shrink to 32×32 (pHash) and 9×8 (dHash) anyway, so starting from ≤ 300 px costs well under a
millisecond and gives the same bits as the full image would, within noise. Stored as signed
bigint (the 64 bits reinterpreted) and compared by Hamming distance (``hamming``).
"""

from __future__ import annotations

from dataclasses import dataclass

import imagehash
from PIL import Image

from assemblage_assets.core.imaging import flatten_on_white

BITS = 64
_SIGN = 1 << (BITS - 1)
_MASK = (1 << BITS) - 1


@dataclass(frozen=True)
class PerceptualHashes:
    phash: int  # signed 64-bit, as stored in images.phash
    dhash: int


def to_signed(value: int) -> int:
    """Unsigned 64-bit -> the signed bigint Postgres stores."""
    value &= _MASK
    return value - (1 << BITS) if value & _SIGN else value


def to_unsigned(value: int) -> int:
    return value & _MASK


def hamming(a: int, b: int) -> int:
    """Differing bits of two hashes (signed or unsigned)."""
    return ((a ^ b) & _MASK).bit_count()


def _as_int(h: imagehash.ImageHash) -> int:
    return to_signed(int(str(h), 16))


def perceptual_hashes(image: Image.Image) -> PerceptualHashes:
    """pHash and dHash of an upright image; transparency is flattened on white first (as in the
    preview), so a transparent background hashes as what people see."""
    grey = flatten_on_white(image).convert("L")  # decode_upright gives RGB or RGBA
    return PerceptualHashes(phash=_as_int(imagehash.phash(grey)), dhash=_as_int(imagehash.dhash(grey)))

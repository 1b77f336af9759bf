"""ThumbHash placeholders: Evan Wallace's encoder (https://evanw.github.io/thumbhash/), in numpy.

A ThumbHash is ~25 bytes holding the DCT of a tiny version of the image (luminance, two colour
channels, alpha when present) plus its aspect ratio; clients decode it into a blurred preview
shown before the thumbnail arrives. The bit layout follows the reference implementation exactly,
so any ThumbHash decoder (JS, Swift, Kotlin, Rust) renders what this encodes.

Why our own: PyPI's ``thumbhash-python`` pins Pillow < 11, and ``thumbhash`` 0.1.2 misencodes
images with alpha (an operator-precedence slip turns the alpha DC into a tuple), its decoder
reuses the first pixel's cosines for every pixel, and its pure-Python loops take ~100 ms on a
100 px image. Written as matrix products, the DCT here costs about a millisecond. Checked
against the reference: the same bytes for the thumbhash repository's 75x100 example photo
as its ports' test vector, and tests/core/test_thumbhash.py compares it with a loop
transcription of the encoder.
"""

from __future__ import annotations

import base64
import functools
import math

import numpy as np
from PIL import Image

MAX_SIDE = 100  # the reference encoder refuses more: larger inputs only cost time


@functools.lru_cache(maxsize=256)
def _cosines(n_coeffs: int, size: int) -> np.ndarray:
    """(n_coeffs, size): cos(pi / size * c * (i + 0.5)); few distinct sizes occur, so cached."""
    table = np.cos(np.pi / size * np.arange(n_coeffs)[:, None] * (np.arange(size)[None, :] + 0.5))
    table.flags.writeable = False
    return table


def _encode_channel(channel: np.ndarray, nx: int, ny: int) -> tuple[float, list[float], float]:
    """DC, AC terms normalised to 0..1 (in the reference's triangular order) and their scale."""
    h, w = channel.shape
    coeffs = _cosines(ny, h) @ channel @ _cosines(nx, w).T / (w * h)  # [cy, cx]
    ac = [float(coeffs[cy, cx]) for cy in range(ny) for cx in range(nx) if cx * ny < nx * (ny - cy) and (cx or cy)]
    scale = max((abs(f) for f in ac), default=0.0)
    if scale > 0:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return float(coeffs[0, 0]), ac, scale


def rgba_to_thumbhash(rgba: np.ndarray) -> bytes:
    """ThumbHash of an (h, w, 4) uint8 RGBA array, both sides <= 100 (RGB not premultiplied)."""
    h, w = rgba.shape[:2]
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an RGBA image of at most {MAX_SIDE}x{MAX_SIDE}, got shape {rgba.shape}")
    px = rgba.astype(np.float64) / 255.0
    alpha = px[..., 3]
    total_alpha = float(alpha.sum())
    avg = (px[..., :3] * alpha[..., None]).sum(axis=(0, 1)) / total_alpha if total_alpha > 0 else np.zeros(3)
    has_alpha = total_alpha < w * h
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs the room
    lx = max(1, round(l_limit * w / max(w, h)))
    ly = max(1, round(l_limit * h / max(w, h)))

    # Composite atop the average colour, then RGB -> LPQ (luminance, yellow-blue, red-green).
    rgb = avg * (1 - alpha[..., None]) + alpha[..., None] * px[..., :3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    l_dc, l_ac, l_scale = _encode_channel((r + g + b) / 3, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = _encode_channel((r + g) / 2 - b, 3, 3)
    q_dc, q_ac, q_scale = _encode_channel(r - g, 3, 3)
    a_dc, a_ac, a_scale = _encode_channel(alpha, 5, 5) if has_alpha else (1.0, [], 1.0)

    is_landscape = w > h
    header24 = (
        _round(63 * l_dc) | _round(31.5 + 31.5 * p_dc) << 6 | _round(31.5 + 31.5 * q_dc) << 12
        | _round(31 * l_scale) << 18 | int(has_alpha) << 23
    )
    header16 = (
        (ly if is_landscape else lx) | _round(63 * p_scale) << 3 | _round(63 * q_scale) << 9
        | int(is_landscape) << 15
    )
    out = bytearray([header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8])
    if has_alpha:
        out.append(_round(15 * a_dc) | _round(15 * a_scale) << 4)
    nibbles = [_round(15 * f) for f in (*l_ac, *p_ac, *q_ac, *a_ac)]
    for i in range(0, len(nibbles), 2):
        out.append(nibbles[i] | (nibbles[i + 1] << 4 if i + 1 < len(nibbles) else 0))
    return bytes(out)


def _round(x: float) -> int:
    """JavaScript's Math.round (halves up), which the reference uses; Python's round() is banker's."""
    return math.floor(x + 0.5)


def image_thumbhash(img: Image.Image) -> str:
    """Base64 ThumbHash of an upright image (any size: shrunk to 100 px first)."""
    if max(img.size) > MAX_SIDE:  # shrink first: converting 100 px is cheaper than 300 px
        scale = MAX_SIDE / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BOX)
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    return base64.b64encode(rgba_to_thumbhash(np.asarray(rgba))).decode("ascii")


def thumbhash_to_rgba(hash_bytes: bytes) -> np.ndarray:
    """Render a ThumbHash as an (h, w, 4) uint8 RGBA placeholder, 32 px on the long side
    (the reference decoder; used by the tests to check what clients will see)."""
    if len(hash_bytes) < 5:
        raise ValueError("a ThumbHash has at least 5 bytes")
    header24 = hash_bytes[0] | hash_bytes[1] << 8 | hash_bytes[2] << 16
    header16 = hash_bytes[3] | hash_bytes[4] << 8
    l_dc = (header24 & 63) / 63
    p_dc = ((header24 >> 6) & 63) / 31.5 - 1
    q_dc = ((header24 >> 12) & 63) / 31.5 - 1
    l_scale = ((header24 >> 18) & 31) / 31
    has_alpha = bool(header24 >> 23)
    p_scale = ((header16 >> 3) & 63) / 63
    q_scale = ((header16 >> 9) & 63) / 63
    is_landscape = bool(header16 >> 15)
    l_max = 5 if has_alpha else 7
    lx = max(3, l_max if is_landscape else header16 & 7)
    ly = max(3, header16 & 7 if is_landscape else l_max)
    a_dc, a_scale = ((hash_bytes[5] & 15) / 15, (hash_bytes[5] >> 4) / 15) if has_alpha else (1.0, 1.0)
    start = 6 if has_alpha else 5
    nibbles = [n for byte in hash_bytes[start:] for n in (byte & 15, byte >> 4)]
    position = 0

    def channel(nx: int, ny: int, scale: float) -> np.ndarray:
        """Coefficient matrix [cy, cx] with the DC left at zero."""
        nonlocal position
        coeffs = np.zeros((ny, nx))
        for cy in range(ny):
            for cx in range(0 if cy else 1, nx):
                if cx * ny < nx * (ny - cy):
                    if position >= len(nibbles):
                        raise ValueError("ThumbHash is truncated")
                    coeffs[cy, cx] = (nibbles[position] / 7.5 - 1) * scale
                    position += 1
        return coeffs

    l_ac = channel(lx, ly, l_scale)
    p_ac = channel(3, 3, p_scale * 1.25)  # the reference boosts saturation to offset quantisation
    q_ac = channel(3, 3, q_scale * 1.25)
    a_ac = channel(5, 5, a_scale) if has_alpha else None

    ratio = thumbhash_aspect_ratio(hash_bytes)
    w, h = (32, round(32 / ratio)) if ratio > 1 else (round(32 * ratio), 32)

    def render(dc: float, coeffs: np.ndarray) -> np.ndarray:
        ny, nx = coeffs.shape
        # x2 on every AC term, as in the reference (the DCT basis is not normalised).
        return dc + 2 * (_cosines(ny, h).T @ coeffs @ _cosines(nx, w))

    lum, p, q = render(l_dc, l_ac), render(p_dc, p_ac), render(q_dc, q_ac)
    a = render(a_dc, a_ac) if a_ac is not None else np.ones((h, w))
    b = lum - 2 / 3 * p
    r = (3 * lum - b + q) / 2
    g = r - q
    return (np.clip(np.stack([r, g, b, a], axis=-1), 0, 1) * 255).astype(np.uint8)


def thumbhash_aspect_ratio(hash_bytes: bytes) -> float:
    """Approximate width / height of the image a ThumbHash was made from."""
    has_alpha = bool(hash_bytes[2] & 0x80)
    l_max = 5 if has_alpha else 7
    l_min = hash_bytes[3] & 7
    is_landscape = bool(hash_bytes[4] & 0x80)
    return (l_max / l_min) if is_landscape else (l_min / l_max)

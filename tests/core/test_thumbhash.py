"""ThumbHash: the reference bit layout, a faithful decode, and the placeholder of a derived image."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.core.thumbhash import (
    image_thumbhash,
    rgba_to_thumbhash,
    thumbhash_aspect_ratio,
    thumbhash_to_rgba,
)
from assemblage_assets.images.derive import derive_image


def two_tone(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    img = Image.new(mode, size, left)
    ImageDraw.Draw(img).rectangle((size[0] // 2, 0, size[0], size[1]), fill=right)
    return img


def decoded(img: Image.Image) -> np.ndarray:
    return thumbhash_to_rgba(base64.b64decode(image_thumbhash(img))).astype(int)


def test_round_trip_keeps_layout_colours_and_aspect() -> None:
    img = two_tone((100, 60), (220, 30, 30), (30, 60, 220))
    raw = base64.b64decode(image_thumbhash(img))
    assert 15 <= len(raw) <= 25  # no alpha: 5 header bytes + packed AC nibbles
    assert thumbhash_aspect_ratio(raw) == pytest.approx(100 / 60, rel=0.2)
    out = thumbhash_to_rgba(raw).astype(int)
    h, w = out.shape[:2]
    assert (w, h) == (32, round(32 / thumbhash_aspect_ratio(raw)))
    left, right = out[:, : w // 4].reshape(-1, 4).mean(0), out[:, -w // 4 :].reshape(-1, 4).mean(0)
    assert left[0] > 150 and left[2] < 100, left  # red side stays red
    assert right[2] > 150 and right[0] < 100, right  # blue side stays blue
    assert (out[..., 3] == 255).all()
    # and overall close to the image itself at the placeholder's size
    target = np.asarray(img.resize((w, h), Image.Resampling.BOX)).astype(int)
    assert np.abs(out[..., :3] - target).mean() < 30


def test_portrait_and_alpha() -> None:
    img = two_tone((40, 90), (0, 0, 0, 0), (250, 200, 20, 255), mode="RGBA")
    raw = base64.b64decode(image_thumbhash(img))
    assert raw[2] & 0x80  # the alpha flag
    assert thumbhash_aspect_ratio(raw) < 1
    out = thumbhash_to_rgba(raw).astype(int)
    w = out.shape[1]
    assert out[:, : w // 4, 3].mean() < 80 and out[:, -w // 4 :, 3].mean() > 180


def test_matches_a_loop_transcription_of_the_reference_encoder() -> None:
    """The numpy DCT against the reference's per-pixel loops, on a random image."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert rgba_to_thumbhash(rgba) == _reference_loops(rgba)


def _reference_loops(rgba: np.ndarray) -> bytes:
    """Direct per-coefficient sums, as the published encoder computes them (opaque images only)."""
    import math

    h, w = rgba.shape[:2]
    px = rgba.astype(float) / 255
    lum = px[..., :3].sum(-1) / 3
    p = (px[..., 0] + px[..., 1]) / 2 - px[..., 2]
    q = px[..., 0] - px[..., 1]
    lx, ly = max(1, round(7 * w / max(w, h))), max(1, round(7 * h / max(w, h)))

    def channel(c: np.ndarray, nx: int, ny: int) -> tuple[float, list[float], float]:
        dc, ac = 0.0, []
        for cy in range(ny):
            cx = 0
            while cx * ny < nx * (ny - cy):
                f = sum(
                    c[y, x] * math.cos(math.pi / w * cx * (x + 0.5)) * math.cos(math.pi / h * cy * (y + 0.5))
                    for y in range(h) for x in range(w)
                ) / (w * h)
                if cx or cy:
                    ac.append(f)
                else:
                    dc = f
                cx += 1
        scale = max(abs(f) for f in ac)
        return dc, [0.5 + 0.5 / scale * f for f in ac], scale

    (l_dc, l_ac, l_s), (p_dc, p_ac, p_s), (q_dc, q_ac, q_s) = (
        channel(lum, max(3, lx), max(3, ly)), channel(p, 3, 3), channel(q, 3, 3)
    )
    rnd = lambda x: math.floor(x + 0.5)  # noqa: E731 - JS Math.round
    h24 = rnd(63 * l_dc) | rnd(31.5 + 31.5 * p_dc) << 6 | rnd(31.5 + 31.5 * q_dc) << 12 | rnd(31 * l_s) << 18
    h16 = (ly if w > h else lx) | rnd(63 * p_s) << 3 | rnd(63 * q_s) << 9 | (w > h) << 15
    out = [h24 & 255, (h24 >> 8) & 255, h24 >> 16, h16 & 255, h16 >> 8]
    odd = False
    for f in (*l_ac, *p_ac, *q_ac):
        if odd:
            out[-1] |= rnd(15 * f) << 4
        else:
            out.append(rnd(15 * f))
        odd = not odd
    return bytes(out)


def test_rejects_oversized_input() -> None:
    with pytest.raises(ValueError, match="at most 100x100"):
        rgba_to_thumbhash(np.zeros((101, 10, 4), dtype=np.uint8))


def test_derived_image_carries_the_placeholder_of_its_thumbnail(tmp_path: Path) -> None:
    source = tmp_path / "src.png"
    two_tone((900, 600), (20, 160, 40), (240, 240, 240)).save(source)
    result = derive_image(str(source), "0" * 8 + "-0000-0000-0000-" + "0" * 12, tmp_path / "cache", DerivativeSpec())
    assert result.ok and result.thumbhash
    out = thumbhash_to_rgba(base64.b64decode(result.thumbhash)).astype(int)
    with Image.open(tmp_path / "cache" / result.thumbnail_key) as thumb:
        # the written WebP thumbnail (lossy) gives nearly the same placeholder
        assert np.abs(decoded(thumb.convert("RGB")) - out).mean() < 20
    assert out[:, :4, 1].mean() > out[:, :4, 0].mean() + 60  # green on the left

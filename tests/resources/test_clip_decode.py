"""Local CLIP's decoder (``decode_for_clip``) turns TIFFs upright like the derivatives do."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.oriented import TIFF_VARIANTS, assert_upright, write_oriented_tiff

from resources.embedding.clip_encoder import decode_for_clip


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("variant", TIFF_VARIANTS)
def test_clip_decodes_tiff_orientations_upright(tmp_path: Path, variant: str, orientation: int) -> None:
    src = write_oriented_tiff(tmp_path / f"{variant}-{orientation}.tif", variant, orientation)
    img = decode_for_clip(str(src), min_side=120)
    assert img.mode == "RGB" and img.size == (240, 120)
    assert_upright(img, variant, f"CLIP input of {variant} orientation {orientation}")

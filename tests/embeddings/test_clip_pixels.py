"""The batched pixel path gives the model's own processor's pixel values (tiny CLIP, real
sentence-transformers processor), and steps aside for what it does not reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.embed_support import tiny_clip

from assemblage_assets.dev.sample_data import make_photo
from resources.embedding.clip_encoder import ClipEncoder, decode_for_clip
from resources.embedding.clip_pixels import PixelPreprocess


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> ClipEncoder:
    return ClipEncoder.load(str(tiny_clip(tmp_path_factory.mktemp("models"))), batch_size=8)


def _decoded(tmp_path: Path, size: int) -> list[Image.Image]:
    images = []
    for i, (w, h) in enumerate(((400, 300), (300, 400), (350, 350), (1201, 799))):
        path = tmp_path / f"{i}.jpg"
        make_photo(w, h, i).save(path, "JPEG", quality=90)
        images.append(decode_for_clip(str(path), size))
    return images


def test_matches_the_processor_on_decoded_images(encoder: ClipEncoder, tmp_path: Path) -> None:
    fast = PixelPreprocess.for_model(encoder.model, encoder.min_side)
    assert fast is not None
    images = _decoded(tmp_path, encoder.min_side)
    assert {min(im.size) for im in images} == {encoder.min_side} and len({im.size for im in images}) == 4
    ours, theirs = fast(images), encoder.model.preprocess(images)
    assert set(ours) == set(theirs)
    np.testing.assert_allclose(ours["pixel_values"].numpy(), theirs["pixel_values"].numpy(), atol=1e-5)
    # and the encoder uses it, to the same vectors
    np.testing.assert_allclose(encoder.forward(encoder.preprocess(images)), encoder.forward(theirs), atol=1e-5)


def test_other_sizes_and_modes_go_to_the_processor(encoder: ClipEncoder, tmp_path: Path) -> None:
    fast = PixelPreprocess.for_model(encoder.model, encoder.min_side)
    small = Image.fromarray(np.full((encoder.min_side - 4, 40, 3), 90, np.uint8))  # would need an upscale
    grey = Image.new("L", (encoder.min_side, encoder.min_side), 128)
    assert fast([small]) is None and fast([grey]) is None and fast([]) is None
    mixed = [*_decoded(tmp_path, encoder.min_side)[:2], small]
    np.testing.assert_allclose(encoder.preprocess(mixed)["pixel_values"].numpy(),
                               encoder.model.preprocess(mixed)["pixel_values"].numpy(), atol=1e-6)
    assert encoder.preprocess(["a photo of a car"])["input_ids"].shape[0] == 1  # texts unchanged


def test_an_unusual_processor_keeps_its_own_path(encoder: ClipEncoder) -> None:
    processor = encoder.model[0].processor.image_processor
    saved = processor.do_center_crop
    processor.do_center_crop = False
    try:
        assert PixelPreprocess.for_model(encoder.model, encoder.min_side) is None
    finally:
        processor.do_center_crop = saved

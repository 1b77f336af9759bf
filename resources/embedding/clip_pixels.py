"""CLIP pixel values for a batch of images already decoded at the model's input size, without
the per-image work of the Hugging Face image processor.

``decode_for_clip`` hands the encoder upright RGB images whose short side is the input size, so
the processor's resize is a copy; what remains is a centre crop, a rescale and a normalization,
which the processor does image by image (1.7 ms per image here, on the cores the model
needs). Here the crop is Pillow's and the rescale and normalization are one table lookup per
byte over the whole batch (0.8 ms per image). ``for_model`` returns ``None`` for processors this does not reproduce (another resize
rule, no centre crop, no normalization), and ``__call__`` returns ``None`` for a batch with an
image of another size; the caller then uses the processor itself. The output matches the
processor's within float32 rounding (tests/embeddings/test_clip_backends.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PixelPreprocess:
    size: int
    table: np.ndarray  # (3, 256) float32: (byte / 255 - mean) / std per channel, as the processor computes it
    modality: Any  # what sentence-transformers' preprocess adds beside pixel_values

    @classmethod
    def for_model(cls, model: Any, size: int) -> PixelPreprocess | None:
        """The fast path for ``model`` (a sentence-transformers CLIP) when its image processor is
        the standard CLIP one: shortest edge and square centre crop of ``size``, 1/255, mean/std."""
        try:
            processor = model[0].processor.image_processor
            resize, crop = processor.size, processor.crop_size
            simple = (
                processor.do_resize and _get(resize, "shortest_edge") == size
                and processor.do_center_crop and _get(crop, "height") == size and _get(crop, "width") == size
                and processor.do_rescale and abs(float(processor.rescale_factor) - 1 / 255) < 1e-12
                and processor.do_normalize and getattr(processor, "do_convert_rgb", True)
            )
            if not simple:
                return None
            probe = model.preprocess([Image.new("RGB", (size, size))])
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        if set(probe) - {"pixel_values", "modality"}:
            return None  # the model wants more than pixels: leave it to its processor
        mean = np.asarray(processor.image_mean, np.float32).reshape(3, 1)
        std = np.asarray(processor.image_std, np.float32).reshape(3, 1)
        table = (np.arange(256, dtype=np.float32)[None, :] * np.float32(1 / 255) - mean) / std
        return cls(size, table, probe.get("modality"))

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, Any] | None:
        if not images or any(im.mode != "RGB" or min(im.size) != self.size for im in images):
            return None
        import torch

        batch = np.empty((len(images), self.size, self.size, 3), np.uint8)
        for i, im in enumerate(images):
            batch[i] = np.asarray(im.crop(self._box(im.size)))
        # A byte has 256 values: look each channel's normalized value up instead of computing
        # it (one gather per element instead of a cast and three float passes).
        pixels = np.empty((len(images), 3, self.size, self.size), np.float32)
        for channel in range(3):
            np.take(self.table[channel], batch[..., channel], out=pixels[:, channel])
        features: dict[str, Any] = {"pixel_values": torch.from_numpy(pixels)}
        if self.modality is not None:
            features["modality"] = self.modality
        return features

    def _box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        # The processor's centre crop: offsets rounded down, as transformers' center_crop does.
        width, height = size
        left, top = (width - self.size) // 2, (height - self.size) // 2
        return left, top, left + self.size, top + self.size


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)

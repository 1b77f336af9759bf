"""CLIP checkpoints with random weights, written in the layout of the released
sentence-transformers CLIP models (``modules.json`` + ``0_CLIPModel/``), so they load through
exactly the code path ``CLIP_MODEL`` uses for a real model.

Three presets:

- ``tiny``: a few hundred KB (2 layers, width 32, 32×32 pixels, byte-level vocabulary of
  514 tokens). Used by the tests and, only on its explicit flag, by ``assemblage demo`` when
  the configured model cannot be loaded offline. ITS VECTORS CARRY NO MEANING.
- ``ViT-B-32`` and ``ViT-L-14``: the released architectures (same layers, widths, patch size,
  224 pixels) with random weights, so the compute per image is identical to the real models.
  Used by ``benchmarks/embeddings.py``.

Never used to stand in for a real model in production paths: those fail with a clear error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from assemblage_assets.dev.checkpoints import seeded, write_atomically
from resources.embedding.clip_encoder import RANDOM_WEIGHTS_MARKER, TINY_MODEL_WARNING, is_random_checkpoint

__all__ = ["TINY_MODEL_NAME", "TINY_MODEL_WARNING", "build_clip_checkpoint", "ensure_tiny_clip", "is_random_checkpoint"]

TINY_MODEL_NAME = "assemblage-tiny-clip-random"

# text tower, vision tower, projection: the released OpenAI CLIP shapes
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 8},
        "projection_dim": 16,
        "full_vocab": False,
    },
    "ViT-B-32": {
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 224, "patch_size": 32},
        "projection_dim": 512,
        "full_vocab": True,
    },
    "ViT-L-14": {
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "image_size": 224, "patch_size": 14},
        "projection_dim": 768,
        "full_vocab": True,
    },
}
RELEASED_VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_level_vocab() -> dict[str, int]:
    """Every byte as a token, alone and word-final, plus CLIP's two special tokens: any text
    tokenizes without unknown tokens and without merges."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab


def build_clip_checkpoint(dest: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """Write a random-weight CLIP of ``preset`` to ``dest`` (replaced atomically) and return it."""
    if preset not in PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; choose from {sorted(PRESETS)}")
    spec = PRESETS[preset]
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest = Path(dest)
    vocab = byte_level_vocab()
    vocab_size = RELEASED_VOCAB_SIZE if spec["full_vocab"] else len(vocab)
    config = CLIPConfig(
        text_config={
            **spec["text"],
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": vocab[BOS],
            "eos_token_id": vocab[EOS],
            "pad_token_id": vocab[EOS],
        },
        vision_config=spec["vision"],
        projection_dim=spec["projection_dim"],
    )
    size = spec["vision"]["image_size"]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer,
    )
    model = seeded(lambda: CLIPModel(config), seed)

    def write(staging: Path) -> None:
        inner = staging / "0_CLIPModel"
        model.save_pretrained(inner)
        processor.save_pretrained(inner)
        (staging / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]
        ))
        (staging / RANDOM_WEIGHTS_MARKER).write_text(
            f"preset={preset} seed={seed}\n{TINY_MODEL_WARNING if preset == 'tiny' else 'random weights'}\n"
        )

    return write_atomically(dest, write)


def ensure_tiny_clip(models_dir: Path) -> Path:
    """The demo's tiny checkpoint under ``models_dir``, built on first use."""
    dest = models_dir / TINY_MODEL_NAME
    if not (dest / "modules.json").is_file():
        logging.getLogger(__name__).warning(TINY_MODEL_WARNING)
        build_clip_checkpoint(dest, "tiny")
    return dest

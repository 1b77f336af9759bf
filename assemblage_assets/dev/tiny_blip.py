"""A BLIP captioning checkpoint with random weights, in the released layout
(``config.json``, ``model.safetensors``, processor and tokenizer files), so it loads through
exactly the code path ``BLIP_MODEL`` uses for a real model (``resources/caption/blip.py``).

Two presets:

- ``tiny``: a few hundred KB: 2 layers of width 32, 32×32 pixels, a WordPiece vocabulary of a
  few dozen caption words plus BLIP's special tokens (``[DEC]`` starts a caption, ``[SEP]`` ends
  it). Used by the tests and, only on its explicit flag, by ``assemblage demo``.
- ``base``: the architecture of ``Salesforce/blip-image-captioning-base`` (ViT-B/16 at 384 px,
  a 12-layer BERT-base decoder, 30,524 tokens) with random weights, so the compute per image is
  the released model's. Used by ``benchmarks/captions.py``.

``build_blip2_checkpoint`` writes a tiny random BLIP-2 (ViT, Q-Former, OPT decoder with a
byte-level vocabulary), so the BLIP-2 path is exercised on machines without a GPU.

THEIR CAPTIONS CARRY NO MEANING: random words. Never a stand-in for a real model in production paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

from assemblage_assets.dev.checkpoints import seeded, write_atomically
from resources.caption.blip import TINY_BLIP_WARNING
from resources.embedding.clip_encoder import RANDOM_WEIGHTS_MARKER

__all__ = ["TINY_BLIP_NAME", "TINY_BLIP_WARNING", "build_blip2_checkpoint", "build_blip_checkpoint", "ensure_tiny_blip"]

TINY_BLIP_NAME = "assemblage-tiny-blip-random"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "a an the of on in with and at by photo picture view car bus bike street road dog cat bird tree "
    "house building sky cloud water field grass red blue green orange white black man woman people "
    "sitting standing parked next to near small large"
).split()


PRESETS = {
    "tiny": {"layers": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
             "image_size": 32, "patch_size": 8, "vocab_size": 0, "projection_dim": 16},
    "base": {"layers": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
             "image_size": 384, "patch_size": 16, "vocab_size": 30524, "projection_dim": 512},
}


def build_blip_checkpoint(dest: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """Write a random-weight BLIP of ``preset`` to ``dest`` (replaced atomically) and return it."""
    if preset not in PRESETS:
        raise ValueError(f"unknown BLIP preset {preset!r}; choose from {sorted(PRESETS)}")
    spec = PRESETS[preset]
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest = Path(dest)
    words = WORDS + [f"w{i}" for i in range(max(0, spec["vocab_size"] - len(SPECIAL) - len(WORDS) - 1))]
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words, "[DEC]"])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    layers, side = spec["layers"], spec["image_size"]
    config = BlipConfig(
        text_config={
            **layers, "vocab_size": len(vocab), "max_position_embeddings": 64,
            "bos_token_id": vocab["[DEC]"], "sep_token_id": vocab["[SEP]"], "eos_token_id": vocab["[SEP]"],
            "pad_token_id": vocab["[PAD]"],
        },
        vision_config={**layers, "image_size": side, "patch_size": spec["patch_size"]},
        projection_dim=spec["projection_dim"],
        image_text_hidden_size=min(256, spec["projection_dim"]),
    )
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": side, "width": side}), tokenizer=tokenizer)
    model = seeded(lambda: BlipForConditionalGeneration(config), seed)

    return _save(dest, model, processor, f"BLIP preset={preset} seed={seed}")


def build_blip2_checkpoint(dest: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight BLIP-2 (OPT decoder) to ``dest`` and return it."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, GPT2Tokenizer
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from assemblage_assets.dev.tiny_clip import BOS, EOS, byte_level_vocab

    vocab = byte_level_vocab()
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], bos_token=BOS, eos_token=EOS, pad_token=EOS)
    queries = 4
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=queries)
    layers = PRESETS["tiny"]["layers"]
    config = Blip2Config(
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        qformer_config={**layers, "encoder_hidden_size": layers["hidden_size"], "vocab_size": 100},
        text_config={"model_type": "opt", "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "word_embed_proj_dim": 32, "max_position_embeddings": 128,
                     "vocab_size": len(tokenizer), "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS],
                     "pad_token_id": vocab[EOS]},
        num_query_tokens=queries,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),  # added by the processor
    )
    model = seeded(lambda: Blip2ForConditionalGeneration(config), seed)
    return _save(Path(dest), model, processor, f"BLIP-2 tiny seed={seed}")


def _save(dest: Path, model: object, processor: object, note: str) -> Path:
    def write(staging: Path) -> None:
        model.save_pretrained(staging)  # type: ignore[attr-defined]
        processor.save_pretrained(staging)  # type: ignore[attr-defined]
        (staging / RANDOM_WEIGHTS_MARKER).write_text(f"{note}\n{TINY_BLIP_WARNING}\n")

    return write_atomically(dest, write)


def ensure_tiny_blip(models_dir: Path) -> Path:
    """The demo's tiny BLIP under ``models_dir``, built on first use."""
    dest = models_dir / TINY_BLIP_NAME
    if not (dest / "config.json").is_file():
        logging.getLogger(__name__).warning(TINY_BLIP_WARNING)
        build_blip_checkpoint(dest)
    return dest

"""Caption cost per image: the ``captions`` stage with local BLIP against model-only time.

Model: the architecture of ``Salesforce/blip-image-captioning-base`` (ViT-B/16 at 384 px and a
12-layer BERT-base decoder) with random weights, built by ``assemblage_assets.dev.tiny_blip``
(preset ``base``) and loaded through the same path as ``BLIP_MODEL``: the compute per image is the
released model's. Random weights rarely emit the end token, so every caption runs to
``CAPTION_MAX_TOKENS``: an upper bound of a real model's generation time.

    model-only   ``generate`` on images decoded and preprocessed beforehand (not timed)
    stage        ``captions.caption_shard`` on a shard of 12 MP JPEGs ingested by the real
                 ``raw_files`` and ``derivatives`` stages: candidate query, decode (the cached
                 thumbnail when it covers 384 px, else the source), preprocess, generate, caption
                 and failure writes

Ratio stage / model-only is against the baseline measured in the same run (compare ratios, not
seconds, across machines). Everything runs against a throwaway embedded Postgres.

    .venv/bin/python benchmarks/captions.py [--images 8] [--batch 8] [--beams 3] [--tokens 30] [--preset base]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_busy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--preset", default="base", choices=["tiny", "base"])
    parser.add_argument("--size", default="4000x3000", help="source JPEG size")
    parser.add_argument("--model", help="an already built checkpoint of the preset (skips the build)")
    args = parser.parse_args()
    # a timeout's SIGTERM unwinds through `finally`: the embedded Postgres is stopped, the folder removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import torch

    from assemblage_assets.core import db
    from assemblage_assets.core.imaging import DerivativeSpec
    from assemblage_assets.dev.sample_data import make_photo
    from assemblage_assets.dev.tiny_blip import build_blip_checkpoint
    from assemblage_assets.embeddings.captions import caption_shard
    from assemblage_assets.images.derive import derive_shard
    from assemblage_assets.images.scan import scan_shard
    from assemblage_assets.images.shards import discover_shards
    from resources.caption import BlipCaptions
    from resources.embedding.paid import clean_image
    from resources.embedding.types import EmbedItem

    busy = cpu_busy()
    work = Path(tempfile.mkdtemp(prefix="bench-captions-"))
    try:
        width, height = (int(v) for v in args.size.split("x"))
        shard_dir = work / "images" / "bench"
        shard_dir.mkdir(parents=True)
        for i in range(args.images):
            make_photo(width, height, i).save(shard_dir / f"IMG_{i:04d}.JPG", "JPEG", quality=90)
        dsn = db.start_embedded(work / "pgdata")
        db.migrate(dsn)
        cache = work / "cache"
        with db.connect(dsn) as conn:
            (shard,) = discover_shards(work / "images")
            scan_shard(conn, shard, max_pixels=120_000_000)
            derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)

        t0 = time.perf_counter()
        model_path = Path(args.model) if args.model else build_blip_checkpoint(work / f"blip-{args.preset}", args.preset)
        built = time.perf_counter() - t0
        provider = BlipCaptions(blip_model=str(model_path), batch_size=args.batch, num_beams=args.beams,
                                max_new_tokens=args.tokens)
        t0 = time.perf_counter()
        loaded = provider.load()
        load_s = time.perf_counter() - t0

        files = sorted(shard_dir.iterdir())
        images = [clean_image(EmbedItem(f.name, str(f)), min_side=loaded.input_side) for f in files]
        loaded.generate(images[:1], args.tokens, args.beams)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(images), args.batch):
            loaded.generate(images[i : i + args.batch], args.tokens, args.beams)
        model_only = time.perf_counter() - t0

        with db.connect(dsn) as conn:
            t0 = time.perf_counter()
            report = caption_shard(conn, shard.key, provider, dsn=dsn, cache_dir=cache)
            stage = time.perf_counter() - t0
        assert report.counts["captioned"] == args.images, report.counts
        result = {
            "preset": args.preset, "images": args.images, "batch": args.batch, "beams": args.beams,
            "max_new_tokens": args.tokens, "torch_threads": torch.get_num_threads(), "cpu_busy_before": busy,
            "build_seconds": round(built, 1), "load_seconds": round(load_s, 2),
            "model_only_s_per_image": round(model_only / args.images, 3),
            "stage_s_per_image": round(stage / args.images, 3),
            "stage_over_model_only": round(stage / model_only, 3),
        }
        print(json.dumps(result, indent=2))
        if busy is not None and busy > 0.3:
            print(f"warning: the machine was {busy:.0%} busy before the run: absolute figures are pessimistic",
                  file=sys.stderr)
    finally:
        if (work / "pgdata").exists():
            db.stop_embedded(work / "pgdata")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which file can the hash backfill start from? pHash/dHash and ThumbHash of images derived before
those columns existed, computed from what is still around, compared with what ``derive_image``
stores (hashes of the in-memory thumbnail, before it is encoded).

Sources compared, for generated photos (``dev.sample_data.make_photo``) of several sizes:
- the stored thumbnail (the spec's format, WebP q80 by default), decoded again;
- the full-resolution original, decoded upright, hashed without fitting;
- the original through derive's own path (decode upright, fit preview, fit thumbnail);
- the watermarked preview (JPEG), decoded again.

Prints, per source, the mean and worst Hamming distance of pHash and dHash to derive's, and how
many ThumbHashes are byte-identical (worst differing bytes otherwise).

    .venv/bin/python benchmarks/hash_sources.py [--photos 24] [--thumbnail-format webp]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from assemblage_assets.constants import preview_key
from assemblage_assets.core.imaging import DerivativeSpec, decode_upright
from assemblage_assets.core.perceptual import hamming, perceptual_hashes
from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.images.derive import derive_image
from assemblage_assets.images.hash_backfill import hashes_from_original, hashes_from_thumbnail

SIZES = ((1600, 1200), (1200, 1600), (3000, 2000), (640, 480))


def _bytes_differing(a: str, b: str) -> int:
    x, y = base64.b64decode(a), base64.b64decode(b)
    return sum(p != q for p, q in zip(x, y, strict=False)) + abs(len(x) - len(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--thumbnail-format", default="webp", choices=("webp", "jpeg", "png"))
    args = parser.parse_args()
    spec = DerivativeSpec(thumbnail_format=args.thumbnail_format)
    dist: dict[str, list[tuple[int, int]]] = {"thumbnail": [], "original": [], "full image": [], "preview": []}
    thumbhash_diff: list[int] = []
    seconds: dict[str, float] = {"thumbnail": 0.0, "original": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in range(args.photos):
            w, h = SIZES[n % len(SIZES)]
            source = root / f"photo{n}.jpg"
            make_photo(w, h, 100 + n).save(source, quality=90)
            derived = derive_image(str(source), f"id{n}", root / "cache", spec)
            assert derived.ok and derived.phash is not None and derived.dhash is not None
            reference = (derived.phash, derived.dhash)

            def record(name: str, ph: int, dh: int, ref: tuple[int, int] = reference) -> None:
                dist[name].append((hamming(ph, ref[0]), hamming(dh, ref[1])))

            started = time.perf_counter()
            thumb = hashes_from_thumbnail((root / "cache" / derived.thumbnail_key).read_bytes())
            seconds["thumbnail"] += time.perf_counter() - started
            record("thumbnail", thumb.phash, thumb.dhash)
            thumbhash_diff.append(_bytes_differing(thumb.thumbhash, derived.thumbhash or ""))
            started = time.perf_counter()
            again = hashes_from_original(source, spec)
            seconds["original"] += time.perf_counter() - started
            record("original", again.phash, again.dhash)
            full, _ = decode_upright(str(source), max(w, h))
            whole = perceptual_hashes(full)
            record("full image", whole.phash, whole.dhash)
            with Image.open(root / "cache" / preview_key(f"id{n}")) as preview:
                marked = perceptual_hashes(preview.convert("RGB"))
            record("preview", marked.phash, marked.dhash)
    print(f"{args.photos} photos, sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}, thumbnail {args.thumbnail_format}"
          f" q{spec.thumbnail_quality}; Hamming distance to the hashes derive stores (64 bits)")
    print(f"{'source':<12} {'pHash mean':>10} {'pHash max':>9} {'dHash mean':>10} {'dHash max':>9} {'dHash > 2':>9}")
    for name, pairs in dist.items():
        ph, dh = [p for p, _ in pairs], [d for _, d in pairs]
        over = sum(1 for d in dh if d > 2) / len(dh)
        print(f"{name:<12} {statistics.mean(ph):>10.2f} {max(ph):>9} {statistics.mean(dh):>10.2f} {max(dh):>9}"
              f" {over:>9.0%}")
    same = sum(1 for d in thumbhash_diff if d == 0)
    print(f"ThumbHash from the stored thumbnail: {same}/{len(thumbhash_diff)} identical, "
          f"worst {max(thumbhash_diff)} differing bytes")
    for name, total in seconds.items():
        print(f"hashing from the {name}: {1000 * total / args.photos:.1f} ms per image")


if __name__ == "__main__":
    main()

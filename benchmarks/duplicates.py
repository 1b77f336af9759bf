"""Near-duplicate thresholds: precision and recall of pHash / dHash Hamming distances on generated
variants, and the false groupings among distinct photos of similar scenes.

Bases: the photos of ``../shared/corpus`` (MANIFEST.tsv, the camera/GPS/orientation photos of at
least 300 px, one per scene) when present, else skipped with the reason; plus generated scenes
(``dev.sample_data.make_photo``). Each base gets the variants the issue lists: resize to 50%,
JPEG quality 20, PNG and WebP (format change), 3% and 5% crop, brightness +15%, a small overlay
caption. Every image is hashed exactly as ``derive_image`` does: decode upright, fit to the
preview, fit to the thumbnail, ``core.perceptual.perceptual_hashes``.

Pairs: positives are every pair within a family (base and its variants); negatives are every pair
across families, and the "similar scene" pairs, which must never be grouped: two framings of one
wide scene panned by 30%, and one background with different foreground shapes.

    .venv/bin/python benchmarks/duplicates.py [--scenes 12] [--size 1600x1200]
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PHOTO_CATEGORIES = {"camera-exif", "gps", "orientation", "webp"}
VARIANTS = ("resize50", "jpeg-q20", "png", "webp", "crop3", "crop5", "bright+15", "overlay-text")


def corpus_bases() -> tuple[list[tuple[str, Image.Image]], str | None]:
    """One upright photo per scene from the shared corpus (the orientation-N files are one scene)."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return [], f"no corpus at {CORPUS} (MANIFEST.tsv missing): generated scenes only"
    bases, seen_orientation = [], False
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["category"] not in PHOTO_CATEGORIES or not row["expected"].startswith(("ok", "orientation")):
                continue
            if min(int(row["width"]), int(row["height"])) < 300 or row["format"] not in ("JPEG", "WEBP"):
                continue
            if "orientation_landscape" in row["file"]:
                if seen_orientation:
                    continue  # landscape_1..8 are one photo stored eight ways
                seen_orientation = True
            with Image.open(CORPUS / row["file"]) as img:
                bases.append((f"corpus:{row['file']}", ImageOps.exif_transpose(img).convert("RGB")))
    return bases, None


def variant(img: Image.Image, kind: str) -> tuple[Image.Image, str, dict]:
    """The image to store, its format and save options."""
    w, h = img.size
    if kind == "resize50":
        return img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "JPEG", {"quality": 85}
    if kind == "jpeg-q20":
        return img, "JPEG", {"quality": 20}
    if kind == "png":
        return img, "PNG", {}
    if kind == "webp":
        return img, "WEBP", {"quality": 80}
    if kind in ("crop3", "crop5"):
        f = (3 if kind == "crop3" else 5) / 100 / 2  # that share of each dimension, half per side
        return img.crop((int(w * f), int(h * f), w - int(w * f), h - int(h * f))), "JPEG", {"quality": 90}
    if kind == "bright+15":
        return ImageEnhance.Brightness(img).enhance(1.15), "JPEG", {"quality": 90}
    if kind == "overlay-text":
        out = img.copy()
        draw = ImageDraw.Draw(out)
        box = (int(w * 0.04), int(h * 0.88), int(w * 0.45), int(h * 0.96))  # ~3% of the area
        draw.rectangle(box, fill=(20, 20, 20))
        draw.text((box[0] + 6, box[1] + 4), "© 2024 holiday", fill=(255, 255, 255), font_size=max(10, h // 30))
        return out, "JPEG", {"quality": 90}
    raise ValueError(kind)


def similar_scenes(count: int, size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    """Distinct photos of similar scenes: pans of one wide scene, one background with other shapes."""
    from assemblage_assets.dev.sample_data import make_photo

    w, h = size
    out = []
    for i in range(count):
        wide = make_photo(int(w * 1.6), h, 5000 + i)
        step = int(w * 0.3)
        out += [(f"pan{i}-a", wide.crop((0, 0, w, h))), (f"pan{i}-b", wide.crop((step, 0, step + w, h)))]
        for j in range(2):  # same sky and ground, other "buildings": a different photo of the place
            scene = make_photo(w, h, 7000 + i).copy()
            draw = ImageDraw.Draw(scene)
            import random

            rng = random.Random(i * 10 + j)
            for _ in range(6):
                x, y = rng.randrange(w), rng.randrange(h // 3, h)
                draw.rectangle((x, y, x + rng.randrange(w // 8, w // 3), y + rng.randrange(h // 8, h // 3)),
                               fill=tuple(rng.randrange(30, 220) for _ in range(3)))
            out.append((f"shapes{i}-{j}", scene))
    return out


def hashes_of(img: Image.Image, fmt: str, options: dict, work: Path, name: str) -> tuple[int, int]:
    from assemblage_assets.core.imaging import DerivativeSpec, decode_upright, fit
    from assemblage_assets.core.perceptual import perceptual_hashes

    spec = DerivativeSpec()
    path = work / f"{name}.{fmt.lower()}"
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    path.write_bytes(buf.getvalue())
    upright, _ = decode_upright(str(path), spec.preview_long_edge)
    thumb = fit(fit(upright, spec.preview_long_edge, spec.preview_long_edge), spec.thumbnail_box, spec.thumbnail_box)
    h = perceptual_hashes(thumb)
    return h.phash, h.dhash


def measure(scenes: int, size: tuple[int, int]) -> None:
    from assemblage_assets.core.perceptual import hamming
    from assemblage_assets.dev.sample_data import make_photo

    bases, skipped = corpus_bases()
    if skipped:
        print(f"skipped: {skipped}")
    bases += [(f"generated:{s}", make_photo(*size, s)) for s in range(scenes)]
    work = Path(tempfile.mkdtemp(prefix="assemblage-bench-dup-"))
    try:
        family: list[tuple[str, str, int, int]] = []  # (family, kind, phash, dhash)
        for name, img in bases:
            family.append((name, "original", *hashes_of(img, "JPEG", {"quality": 92}, work, "base")))
            for kind in VARIANTS:
                family.append((name, kind, *hashes_of(*variant(img, kind), work, kind)))
        similar = [(n, *hashes_of(img, "JPEG", {"quality": 90}, work, n)) for n, img in similar_scenes(scenes // 2 or 1, size)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pos, neg = [], []
    for a, b in itertools.combinations(family, 2):
        kind = b[1] if a[1] == "original" else a[1] if b[1] == "original" else "variant-pair"
        pair = (hamming(a[2], b[2]), hamming(a[3], b[3]), kind)
        (pos if a[0] == b[0] else neg).append(pair)
    scene_pairs = [(hamming(a[1], b[1]), hamming(a[2], b[2])) for a, b in itertools.combinations(similar, 2)
                   if a[0].split("-")[0] == b[0].split("-")[0]]
    neg_all = [(p, d) for p, d, _ in neg] + scene_pairs
    print(f"{len(bases)} bases ({len(bases) - scenes} corpus, {scenes} generated) x {len(VARIANTS)} variants: "
          f"{len(pos)} positive pairs, {len(neg)} cross-family pairs, {len(scene_pairs)} similar-scene pairs\n")

    from assemblage_assets.duplicates.config import DuplicateSettings

    dp, dd = DuplicateSettings.phash_distance, DuplicateSettings.dhash_distance
    print(f"per variant, against its original: worst distances, and recall at the defaults (pHash ≤ {dp}, dHash ≤ {dd}):")
    for kind in VARIANTS:
        ds = [(p, d) for p, d, k in pos if k == kind]
        hit = sum(p <= dp and d <= dd for p, d in ds) / len(ds)
        print(f"  {kind:<13} pHash max {max(p for p, _ in ds):2d}  dHash max {max(d for _, d in ds):2d}  recall {hit:.3f}")
    print(f"  similar scenes: pHash min {min(p for p, _ in scene_pairs)}, dHash min {min(d for _, d in scene_pairs)}; "
          f"cross-family: pHash min {min(p for p, _ in neg_all)}, dHash min {min(d for _, d in neg_all)}\n")

    print("| rule | recall | precision | false pairs | similar-scene pairs grouped |")
    print("|---|---:|---:|---:|---:|")
    for tp_, td_ in ((6, 64), (8, 64), (10, 64), (12, 64), (14, 64), (10, 12), (12, 14), (14, 16), (16, 18)):
        tp = sum(p <= tp_ and d <= td_ for p, d, _ in pos)
        fp = sum(p <= tp_ and d <= td_ for p, d in neg_all)
        fp_scene = sum(p <= tp_ and d <= td_ for p, d in scene_pairs)
        rule = f"pHash ≤ {tp_}" + (f" and dHash ≤ {td_}" if td_ < 64 else "")
        prec = tp / (tp + fp) if tp + fp else 1.0
        print(f"| {rule} | {tp / len(pos):.3f} | {prec:.3f} | {fp} | {fp_scene} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=12, help="generated base scenes (and half as many similar-scene sets)")
    parser.add_argument("--size", default="1600x1200", help="WIDTHxHEIGHT of generated scenes")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    measure(args.scenes, (w, h))


if __name__ == "__main__":
    main()

"""The command line both per-image added-cost benchmarks share (perceptual_cost.py,
enrichments.py): generate the 12 MP JPEGs (or take ``--src``), measure in a child process
(``--_measure``), print the report."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def main(description: str, measure: Callable[[Path, int], dict], report: Callable[[Path, int], str], prefix: str) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--src", help="a folder of *.JPG to use instead of generating")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(Path(args._measure), args.repeat)))
        return
    if args.src:
        print(report(Path(args.src), args.repeat))
        return
    from derivatives import generate  # benchmarks/ is on sys.path when a script runs

    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix=f"assemblage-bench-{prefix}-src-"))
    try:
        generate(work, args.images, (width, height), 1)
        print(report(work, args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def source_jpegs(src_dir: Path) -> list[Path]:
    return sorted(p for p in src_dir.iterdir() if p.suffix.upper() == ".JPG")


def derive_seconds(files: list[Path], repeat: int) -> list[float]:
    """Seconds of ``derive_image`` over ``files``, once per repeat: the baseline both compare with."""
    from assemblage_assets.core.imaging import DerivativeSpec
    from assemblage_assets.images.derive import derive_image

    spec = DerivativeSpec()
    out = Path(tempfile.mkdtemp(prefix="assemblage-bench-derive-"))
    try:
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            for i, path in enumerate(files):
                if not derive_image(str(path), f"{i:08d}-0000-0000-0000-000000000000", out, spec).ok:
                    raise SystemExit(f"derive_image failed on {path}")
            seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def thumbnails(files: list[Path]) -> list:
    """Each file's thumbnail exactly as ``derive_image`` holds it in memory."""
    from assemblage_assets.core.imaging import DerivativeSpec, decode_upright, fit

    spec = DerivativeSpec()
    thumbs = []
    for path in files:
        upright, _ = decode_upright(str(path), spec.preview_long_edge)
        preview = fit(upright, spec.preview_long_edge, spec.preview_long_edge)
        thumbs.append(fit(preview, spec.thumbnail_box, spec.thumbnail_box))
    return thumbs

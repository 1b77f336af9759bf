"""The command line both per-image added-cost benchmarks share (perceptual_cost.py,
enrichments.py): generate the 12 MP JPEGs (or take ``--src``), measure in a child process
(``--_measure``), print the report."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
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
